"""The FFF layer: module, reference oracle, conditional execution paths, the compiled CPU kernel and the Triton GPU
kernels (registered for CUDA by ``triton_ops``; Triton is imported on their first call); and the grouped-leaf FFF
(``grouped``: leaves that are small dense blocks, for converting trained feedforwards)."""

from . import balance, kernels, ops, triton_ops
from .balance import update_routing_offsets
from .grouped import GROUPED_IMPLEMENTATIONS, GroupedFFF, check_grouped_impl
from .layer import FFF, IMPLEMENTATIONS, check_balance_rate, check_impl
from .reference import fff_reference, neurons_per_token, nodes_per_tree, visited_nodes_reference
from .sparse import sparse_fff, walk_backward, walk_forward

__all__ = [
    "FFF",
    "GROUPED_IMPLEMENTATIONS",
    "IMPLEMENTATIONS",
    "GroupedFFF",
    "balance",
    "check_balance_rate",
    "check_grouped_impl",
    "check_impl",
    "fff_reference",
    "kernels",
    "neurons_per_token",
    "nodes_per_tree",
    "ops",
    "sparse_fff",
    "triton_ops",
    "update_routing_offsets",
    "visited_nodes_reference",
    "walk_backward",
    "walk_forward",
]
