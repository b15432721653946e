# Generated from ultrafastbert/fff/grouped.py by `make folder-code`: edit the package, not this copy.
"""The grouped-leaf FFF: a routing tree whose leaves are small dense feedforward blocks, beside an always-on shared
block (the FFF paper's general form, with leaves wider than one neuron).

``depth`` ``k`` routing levels of single linear units (heap order, as in ``FFF``: a token goes right at a node
when its logit is strictly positive) choose one of ``2**k`` leaves per token. Each leaf is ``leaf_width`` neurons
(in weights, in bias, the activation, out weights, and an output bias of its own); the shared leaf is
``shared_width`` neurons every token evaluates. A token's output is

    shared(x) + leaf[route(x)](x) + bias

The routing nodes only route: their logits decide the path and add nothing to the output, so the output is
exactly a narrow dense feedforward of ``shared_width + leaf_width`` neurons chosen per token. With every neuron in
the shared leaf (``depth=0`` and ``leaf_width=0``, or any depth with ``leaf_width=0``) the layer is a dense
feedforward. Routing gets no gradient from the output (hard decisions); training moves the leaves, the shared leaf
and the biases.

Two paths with one semantics, chosen by ``impl``:

- ``"reference"``: every leaf computed for every token and masked by the leaf whose every routing decision the
  token agrees with; the oracle, slow on purpose.
- ``"auto"`` (default): tokens sorted by leaf, one matrix product per leaf on its tokens (the mixture-of-experts
  pattern), results put back in token order with ``index_add``; autograd through it.

Routing logits are computed in float32 by both paths, so a bfloat16 layer routes every token the same way on
either path; the reference computes the rest in float32 and rounds once, the fast path in the input's dtype.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUPED_IMPLEMENTATIONS = ("auto", "reference")
# 4,096 leaves: more than any feedforward worth converting has groups of neurons; a deeper tree is a typo.
MAX_GROUPED_DEPTH = 12


def check_grouped_impl(impl: str, name: str = "grouped FFF impl") -> str:
    """``impl`` if it names a grouped-layer path (``GROUPED_IMPLEMENTATIONS``), else a one-line ``ValueError``."""
    if impl not in GROUPED_IMPLEMENTATIONS:
        raise ValueError(f"unknown {name} {impl!r}; choose one of {GROUPED_IMPLEMENTATIONS}")
    return impl


def route_logits(x: Tensor, router_weight: Tensor, router_bias: Tensor) -> Tensor:
    """Every routing node's logit ``(N, 2**k - 1)`` for tokens ``x`` ``(N, H)``, in float32 whatever the dtype."""
    return F.linear(x.float(), router_weight.float(), router_bias.float())


def leaf_of(logits: Tensor, depth: int) -> Tensor:
    """The leaf ``(N,)`` (0 .. 2**depth - 1, left to right) each token reaches walking down from the root."""
    node = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    for _ in range(depth):
        right = logits.gather(1, node.unsqueeze(1)).squeeze(1) > 0
        node = 2 * node + 1 + right.long()
    return node - (2**depth - 1)


class GroupedFFF(nn.Module):
    """Grouped-leaf fast feedforward on ``width`` features: ``2**depth`` leaves of ``leaf_width`` neurons, routed by
    ``2**depth - 1`` linear nodes, plus a shared leaf of ``shared_width`` neurons and (``output_bias``) a bias.

    Parameters (``L = 2**depth``): ``router_weight`` ``(L-1, width)``, ``router_bias`` ``(L-1,)``,
    ``leaf_in_weight`` ``(L, leaf_width, width)``, ``leaf_in_bias`` ``(L, leaf_width)``, ``leaf_out_weight``
    ``(L, leaf_width, width)`` (stored transposed, rows are neurons), ``leaf_out_bias`` ``(L, width)``,
    ``shared_in_weight`` ``(shared_width, width)``, ``shared_in_bias`` ``(shared_width,)``,
    ``shared_out_weight`` ``(shared_width, width)`` and ``bias`` ``(width,)`` when ``output_bias``.
    ``activation`` is the neurons' activation module (default ``nn.GELU()``).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        leaf_width: int,
        shared_width: int = 0,
        activation: nn.Module | None = None,
        output_bias: bool = True,
        impl: str = "auto",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        sizes = {"width": width, "depth": depth, "leaf_width": leaf_width, "shared_width": shared_width}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"GroupedFFF {name} must be an integer, got {value!r}")
        if width < 1 or not 0 <= depth <= MAX_GROUPED_DEPTH or leaf_width < 0 or shared_width < 0:
            raise ValueError(
                f"GroupedFFF needs width >= 1, 0 <= depth <= {MAX_GROUPED_DEPTH}, leaf_width >= 0 and "
                f"shared_width >= 0; got {width=}, {depth=}, {leaf_width=}, {shared_width=}"
            )
        if leaf_width + shared_width == 0:
            raise ValueError("GroupedFFF needs at least one neuron (leaf_width + shared_width >= 1)")
        self.width, self.depth, self.leaf_width, self.shared_width = width, depth, leaf_width, shared_width
        self.impl = check_grouped_impl(impl)
        self.init_std = init_std
        leaves = 2**depth
        self.activation = nn.GELU() if activation is None else activation
        self.router_weight = nn.Parameter(torch.empty(leaves - 1, width))
        self.router_bias = nn.Parameter(torch.empty(leaves - 1))
        self.leaf_in_weight = nn.Parameter(torch.empty(leaves, leaf_width, width))
        self.leaf_in_bias = nn.Parameter(torch.empty(leaves, leaf_width))
        self.leaf_out_weight = nn.Parameter(torch.empty(leaves, leaf_width, width))
        self.leaf_out_bias = nn.Parameter(torch.empty(leaves, width))
        self.shared_in_weight = nn.Parameter(torch.empty(shared_width, width))
        self.shared_in_bias = nn.Parameter(torch.empty(shared_width))
        self.shared_out_weight = nn.Parameter(torch.empty(shared_width, width))
        self.bias = nn.Parameter(torch.empty(width)) if output_bias else None
        self.reset_parameters()

    @property
    def leaves(self) -> int:
        return 2**self.depth

    @property
    def neurons_per_token(self) -> int:
        """Neurons one token evaluates: the shared leaf's and one leaf's (routing nodes not counted)."""
        return self.shared_width + self.leaf_width

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weights ``N(0, init_std)``, biases 0."""
        for weight in (self.router_weight, self.leaf_in_weight, self.leaf_out_weight):
            weight.normal_(0.0, self.init_std)
        for weight in (self.shared_in_weight, self.shared_out_weight):
            weight.normal_(0.0, self.init_std)
        for bias in (self.router_bias, self.leaf_in_bias, self.leaf_out_bias, self.shared_in_bias):
            bias.zero_()
        if self.bias is not None:
            self.bias.zero_()

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, depth={self.depth}, leaves={self.leaves}, leaf_width={self.leaf_width}, "
            f"shared_width={self.shared_width}, output_bias={self.bias is not None}, impl={self.impl!r}"
        )

    def route(self, x: Tensor) -> Tensor:
        """The leaf ``(...,)`` each token of ``x`` ``(..., width)`` reaches."""
        flat = x.reshape(-1, self.width)
        if self.depth == 0:
            return torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
        return leaf_of(route_logits(flat, self.router_weight, self.router_bias), self.depth).reshape(x.shape[:-1])

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.width:
            raise ValueError(f"GroupedFFF expects inputs of width {self.width}, got shape {tuple(x.shape)}")
        flat = x.reshape(-1, self.width)  # (N, H)
        if flat.shape[0] == 0:
            return x.new_zeros(x.shape)
        out = self._reference(flat) if self.impl == "reference" else self._grouped(flat)
        return out.reshape(x.shape)

    def _reference(self, x: Tensor) -> Tensor:
        """Every leaf for every token, masked by the leaf that agrees with every routing decision of the token."""
        dtype, x32 = x.dtype, x.float()
        leaves, tokens = self.leaves, x.shape[0]
        logits = route_logits(x, self.router_weight, self.router_bias)  # (N, L-1)
        chosen = torch.ones(tokens, leaves, dtype=torch.bool, device=x.device)
        for leaf in range(leaves):
            node = 0
            for level in reversed(range(self.depth)):  # root first: bit `level` of the leaf is the direction
                right = (leaf >> level) & 1
                chosen[:, leaf] &= (logits[:, node] > 0) == bool(right)
                node = 2 * node + 1 + right
        mask = chosen.float()  # (N, L), one 1 per row
        hidden = self.activation(
            F.linear(x32, self.leaf_in_weight.float().reshape(-1, self.width), self.leaf_in_bias.float().reshape(-1))
        )  # (N, L*l)
        hidden = (hidden.reshape(tokens, leaves, self.leaf_width) * mask.unsqueeze(2)).reshape(tokens, -1)
        out = hidden @ self.leaf_out_weight.float().reshape(-1, self.width) + mask @ self.leaf_out_bias.float()
        shared = self.activation(F.linear(x32, self.shared_in_weight.float(), self.shared_in_bias.float()))
        out = out + shared @ self.shared_out_weight.float()
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(dtype)

    def _grouped(self, x: Tensor) -> Tensor:
        """Tokens grouped by leaf, one matrix product per leaf, added onto the shared leaf's output."""
        if self.shared_width:
            shared = self.activation(F.linear(x, self.shared_in_weight, self.shared_in_bias))
            out = shared @ self.shared_out_weight  # (N, H)
            if self.bias is not None:
                out = out + self.bias
        elif self.bias is not None:
            out = self.bias.expand(x.shape[0], self.width)
        else:
            out = x.new_zeros(x.shape[0], self.width)
        if self.leaf_width == 0:
            return out + self.leaf_out_bias[self.route(x)]
        if self.depth == 0:
            hidden = self.activation(F.linear(x, self.leaf_in_weight[0], self.leaf_in_bias[0]))
            return out + torch.addmm(self.leaf_out_bias[0], hidden, self.leaf_out_weight[0])
        leaf = self.route(x)  # (N,)
        order = torch.argsort(leaf, stable=True)
        counts = torch.bincount(leaf, minlength=self.leaves).tolist()
        routed = []
        for index, tokens in enumerate(x.index_select(0, order).split(counts)):
            if tokens.shape[0]:
                hidden = self.activation(F.linear(tokens, self.leaf_in_weight[index], self.leaf_in_bias[index]))
                routed.append(torch.addmm(self.leaf_out_bias[index], hidden, self.leaf_out_weight[index]))
        return out.index_add(0, order, torch.cat(routed))
