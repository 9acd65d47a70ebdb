"""hypernet: Stable Diffusion hypernetworks, loaded exactly as A1111 wrote them, applied, trained and served."""

import os

# OpenMP threads that spin while waiting make torch 10-40x slower whenever other processes share the cores (a
# server's worker threads, a busy desktop). Read once, when torch loads, so it must be set before that import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


from typing import Any

from hypernet.errors import HypernetError

__all__ = ["Hypernetwork", "HypernetError", "apply_stack", "list_hypernetworks", "load_hypernetwork"]
__version__ = "0.1.0"
_NETWORK = frozenset({"Hypernetwork", "apply_stack", "list_hypernetworks", "load_hypernetwork"})


def __getattr__(name: str) -> Any:
    """The network API loads torch; importing it on first use keeps the CLI's refusals under a second."""
    if name in _NETWORK:
        import hypernet.network

        return getattr(hypernet.network, name)
    raise AttributeError(f"module 'hypernet' has no attribute {name!r}")
