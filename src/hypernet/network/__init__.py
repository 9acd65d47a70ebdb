"""The hypernetwork and its files (pure torch; knows nothing of diffusers)."""

from hypernet.network.files import describe_file, list_hypernetworks, load_hypernetwork, sanitize_name
from hypernet.network.hypernetwork import Architecture, Hypernetwork, apply_stack, parse_numbers
from hypernet.network.writing import save_hypernetwork

__all__ = [
    "Architecture",
    "Hypernetwork",
    "apply_stack",
    "describe_file",
    "list_hypernetworks",
    "load_hypernetwork",
    "parse_numbers",
    "sanitize_name",
    "save_hypernetwork",
]
