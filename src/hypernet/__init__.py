"""hypernet: Stable Diffusion hypernetworks, loaded exactly as A1111 wrote them, applied, trained and served."""

from hypernet.errors import HypernetError
from hypernet.network import Hypernetwork, apply_stack, list_hypernetworks, load_hypernetwork

__all__ = ["Hypernetwork", "HypernetError", "apply_stack", "list_hypernetworks", "load_hypernetwork"]
__version__ = "0.1.0"
