"""The FFF layer: module, reference oracle and conditional execution paths."""

from .layer import FFF, IMPLEMENTATIONS
from .reference import fff_reference, nodes_per_tree, visited_nodes_reference
from .sparse import sparse_fff, walk_backward, walk_forward

__all__ = [
    "FFF",
    "IMPLEMENTATIONS",
    "fff_reference",
    "nodes_per_tree",
    "sparse_fff",
    "visited_nodes_reference",
    "walk_backward",
    "walk_forward",
]
