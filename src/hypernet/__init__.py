"""hypernet: Stable Diffusion hypernetworks, loaded exactly as A1111 wrote them, applied, trained and served."""

from hypernet.errors import HypernetError

__all__ = ["HypernetError"]
__version__ = "0.1.0"
