"""The FFF layer: module, reference oracle, conditional execution paths and the compiled CPU kernel."""

from . import kernels, ops
from .layer import FFF, IMPLEMENTATIONS, check_impl
from .reference import fff_reference, neurons_per_token, nodes_per_tree, visited_nodes_reference
from .sparse import sparse_fff, walk_backward, walk_forward

__all__ = [
    "FFF",
    "IMPLEMENTATIONS",
    "check_impl",
    "fff_reference",
    "kernels",
    "neurons_per_token",
    "nodes_per_tree",
    "ops",
    "sparse_fff",
    "visited_nodes_reference",
    "walk_backward",
    "walk_forward",
]
