"""The hypernetwork and its files (pure torch; knows nothing of diffusers)."""

from hypernet.network.files import list_hypernetworks, load_hypernetwork, save_hypernetwork
from hypernet.network.hypernetwork import Architecture, Hypernetwork, apply_stack

__all__ = ["Architecture", "Hypernetwork", "apply_stack", "list_hypernetworks", "load_hypernetwork", "save_hypernetwork"]
