# Written by save_pretrained from ultrafastbert/fff/layer.py: edit the package, not this copy.
"""The fast feedforward (FFF) layer: ``K`` balanced binary trees of neurons, one root-to-leaf path per token.

One module, several execution paths with one semantics (``docs/design.md`` §1), chosen by ``impl``:

- ``"reference"``: dense masking computation of the original code; the oracle.
- ``"sparse"``: pure-PyTorch conditional forward + backward touching only the visited nodes (training).
- ``"walk"``: pure-PyTorch conditional forward without autograd bookkeeping (inference only).
- ``"kernel"``: the compiled CPU kernel (``csrc/``, called through the typed wrappers of ``ops``), float32 and
  bfloat16, forward and backward; inference uses a forward that saves nothing for backward.
- ``"triton"``: the Triton GPU kernels (``triton_kernels``, through the same ops), float32 and bfloat16, forward
  and backward; registered for CUDA where Triton is installed.
- ``"auto"`` (default): the fastest correct path for the device, dtype and grad mode: ``"kernel"`` on CPU for
  float32/bfloat16 when the kernel is built, ``"triton"`` on CUDA for float32/bfloat16 when Triton is installed,
  else ``"sparse"`` (with grad) or ``"walk"`` (without).

While ``torch.onnx.export`` traces the layer, every path but ``"reference"`` computes ``onnx.onnx_fff`` (dense
masking for shallow trees, gathers for deep ones), which ONNX can hold (the compiled ops cannot).

With ``balance_rate > 0`` the layer keeps its trees balanced without a loss (``docs/design.md`` §1): a per-node
``routing_offset`` buffer (float32, not trained by gradient, saved in the state dict) is added to the logits for
the routing decision only, and ``balance.update_routing_offsets`` moves it after each optimizer step from the visit
counts that the layer's training forwards record. With ``balance_rate=0`` (the default) there is no buffer and
the layer is the published one, state dict included.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn
from torch.compiler import is_compiling

from .fff_kernels import kernels, ops
from .fff_onnx import exporting_to_onnx, onnx_fff
from .fff_kernels import KERNEL_DTYPES, TRITON_DEVICES
from .fff_reference import fff_reference, neurons_per_token, nodes_per_tree, tree_offsets, visited_nodes_reference
from .fff_sparse import sparse_fff, walk_forward

IMPLEMENTATIONS = ("auto", "reference", "sparse", "walk", "kernel", "triton")
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_KERNEL_IMPLS = ("auto", "kernel")  # impls whose inference runs the kernel when it can
# Deepest tree a layer accepts. The kernel takes up to ops.MAX_DEPTH (24), but a depth-20 tree at width 768 already
# holds two 2**21 x 768 matrices (12 GiB in float32); anything deeper is a typo, not a model.
MAX_DEPTH = 20


def check_impl(impl: str, name: str = "FFF impl") -> str:
    """``impl`` if it names an FFF execution path (``IMPLEMENTATIONS``), else a ``ValueError`` that calls it
    ``name`` (e.g. the config field) and lists them."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown {name} {impl!r}; choose one of {IMPLEMENTATIONS}")
    return impl


def routing_balance_loss(x: Tensor, weight_in: Tensor, bias_in: Tensor, nodes: Tensor, depth: int) -> Tensor:
    """Load-balancing loss of one forward (the mixture-of-experts auxiliary loss, per tree node): over the internal
    nodes the tokens of ``x`` ``(N, H)`` visited (``nodes`` ``(N, K, D+1)``), the sum of ``(share_right - 1/2) *
    mean(sigmoid(logit))`` weighted by each node's share of the visits. The hard shares are constants; the gradient
    lowers the logits at a node that sends more than half of its tokens right and raises them where fewer go."""
    tokens, trees = nodes.shape[0], nodes.shape[1]
    dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    internal = nodes[:, :, :depth]  # (N, K, D)
    gathered = internal.reshape(tokens, -1)
    logits = torch.einsum("nh,nvh->nv", x.to(dtype), weight_in[gathered].to(dtype)) + bias_in[gathered].to(dtype)
    flat = gathered.reshape(-1)
    rows = weight_in.shape[0]
    with torch.no_grad():
        local = nodes - tree_offsets(trees, depth, nodes.device).view(1, trees, 1)
        went_right = (local[:, :, 1:] - 2 * local[:, :, :depth] - 1).reshape(-1).to(dtype)  # 1 right, 0 left
        reached = torch.bincount(flat, minlength=rows).to(dtype).clamp_min(1)
        share_right = torch.zeros(rows, dtype=dtype, device=x.device).index_add_(0, flat, went_right) / reached
    sigmoid_sum = torch.zeros(rows, dtype=dtype, device=x.device).index_add(0, flat, torch.sigmoid(logits).reshape(-1))
    # sum over nodes of (share_right - 1/2) * mean sigmoid * visits / all visits
    return ((share_right - 0.5) * sigmoid_sum).sum() / max(flat.numel(), 1)


def check_balance_rate(rate: float, name: str = "FFF balance_rate") -> float:
    """``rate`` if it is a finite number >= 0 (a routing offset step), else a one-line ``ValueError`` naming it."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {rate!r}")
    return float(rate)


class FFF(nn.Module):
    """Fast feedforward layer ``UltraFastBERT-KxD``: ``trees`` trees of depth ``depth`` on ``width`` features.

    Parameters are named as in the published checkpoints: ``linear_in`` (``K*n`` x ``width``, with bias) and
    ``linear_out`` (``width`` x ``K*n``, no bias), tree ``k`` owning node rows ``[k*n, (k+1)*n)`` in heap order.
    ``width``, ``depth`` and ``trees`` are integers; ``depth`` is at most ``MAX_DEPTH`` (20). ``balance_rate``
    (>= 0) is the step by which ``balance.update_routing_offsets`` moves each node's routing offset; 0 keeps the
    published layer (no offset). ``balance_loss`` (>= 0) weighs an auxiliary load-balancing loss that training
    forwards leave in ``routing_loss`` (``routing_balance_loss`` above, handed on by ``balance.take_routing_loss``);
    0: none.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        trees: int = 1,
        impl: str = "auto",
        init_std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        balance_rate: float = 0.0,
        balance_loss: float = 0.0,
    ) -> None:
        super().__init__()
        check_balance_rate(balance_rate)
        check_balance_rate(balance_loss, "FFF balance_loss")
        for name, value in (("width", width), ("depth", depth), ("trees", trees)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"FFF {name} must be an integer, got {value!r}")
        if width < 1 or not 0 <= depth <= MAX_DEPTH or trees < 1:
            raise ValueError(
                f"need width >= 1, 0 <= depth <= {MAX_DEPTH}, trees >= 1; got {width=}, {depth=}, {trees=}"
            )
        self.width, self.depth, self.trees = width, depth, trees
        self.init_std = init_std
        nodes = trees * nodes_per_tree(depth)
        self.linear_in = nn.Linear(width, nodes, bias=True, device=device, dtype=dtype)
        self.linear_out = nn.Linear(nodes, width, bias=False, device=device, dtype=dtype)
        self.balance_rate = float(balance_rate)
        # Float32 whatever the weights' dtype (``_apply`` keeps it so): steps of ``balance_rate`` must not round away.
        offset = torch.zeros(nodes, dtype=torch.float32, device=device) if balance_rate > 0 else None
        self.register_buffer("routing_offset", offset)
        # Tokens that reached each node (K*n,) in the training forwards since ``balance.take_routing_visits`` last
        # took them: recorded by balancing layers, and by any layer while ``record_visits`` is set (tree health in
        # training). A plain attribute, not a buffer: DDP would broadcast rank 0's counts over the others'.
        self.routing_visits: Tensor | None = None
        self.record_visits = False
        # Which tokens' visits count (bool, one per token of the next forwards; None: all): set by
        # ``balance.count_visits_at`` so that masked-language-model training balances on the uncorrupted positions.
        self.visit_tokens: Tensor | None = None
        # The load-balancing loss of the training forwards since ``balance.take_routing_loss`` last took it.
        self.balance_loss = float(balance_loss)
        self.routing_loss: Tensor | None = None
        self.impl = impl
        self._weight_out_t_cache: tuple | None = None
        self.reset_parameters()

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        self._impl = check_impl(value)

    @property
    def neurons_per_token(self) -> int:
        """Neurons each token evaluates: one per tree level per tree."""
        return neurons_per_token(self.depth, self.trees)

    def reset_parameters(self) -> None:
        """Published-model initialisation: ``N(0, init_std)`` weights, zero bias."""
        nn.init.normal_(self.linear_in.weight, std=self.init_std)
        nn.init.zeros_(self.linear_in.bias)
        nn.init.normal_(self.linear_out.weight, std=self.init_std)

    def extra_repr(self) -> str:
        balance = f", balance_rate={self.balance_rate}" if self.balance_rate > 0 else ""
        return f"width={self.width}, depth={self.depth}, trees={self.trees}, impl={self.impl!r}{balance}"

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """``nn.Module._apply`` (``to``, ``half``, ``cuda``, ...) that moves ``routing_offset`` to the new device but
        keeps it float32: an offset rounded to bfloat16 would lose steps of ``balance_rate`` near 1."""
        offset = self._buffers.get("routing_offset")
        super()._apply(fn, recurse)
        moved = self._buffers.get("routing_offset")
        if offset is not None and moved is not None and moved.dtype != torch.float32:
            self._buffers["routing_offset"] = offset.to(device=moved.device)
        return self

    def forward(self, x: Tensor, return_path: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``(..., width)`` -> ``(..., width)``; with ``return_path`` also the visited global node
        indices ``(..., trees, depth+1)``, root first."""
        weight_in, bias_in, weight_out = self._parameter_tensors()
        offset = self._buffers.get("routing_offset")
        if not return_path and self._impl in _KERNEL_IMPLS and isinstance(x, Tensor):
            # The inference hot path, a few microseconds at one token: every condition is one cheap attribute
            # test (the op checks the rest), and any input it does not take goes the checked general way below.
            dtype, shape = x.dtype, x.shape
            if (
                dtype is weight_in.dtype
                and dtype in KERNEL_DTYPES
                and x.is_cpu
                and weight_in.is_cpu
                and shape
                and shape[-1] == self.width
                and not (torch.is_grad_enabled() and self._needs_grad(x))
                and kernels.available()
                and not exporting_to_onnx()
            ):
                weight_out_t = self._weight_out_t(weight_out)
                if len(shape) == 2:
                    return ops.fff_infer(x, weight_in, bias_in, weight_out_t, self.depth, self.trees, offset)
                out = ops.fff_infer(
                    x.reshape(-1, self.width), weight_in, bias_in, weight_out_t, self.depth, self.trees, offset
                )
                return out.view(shape)
        self._check_input(x, weight_in)
        impl = self.resolve_impl(x)
        needs_grad = self._needs_grad(x)
        training = self.training and needs_grad
        record = (offset is not None or self.record_visits) and training
        auxiliary = self.balance_loss > 0 and self.depth > 0 and training  # the load-balancing loss
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.width)
        if impl != "reference" and exporting_to_onnx():  # the compiled ops have no ONNX form: see onnx.py
            out, nodes = onnx_fff(flat, weight_in, bias_in, weight_out, self.depth, self.trees, offset)
        elif impl == "reference":
            out = fff_reference(flat, weight_in, bias_in, weight_out, self.depth, self.trees, offset)
            nodes = (
                visited_nodes_reference(flat, weight_in, bias_in, self.depth, self.trees, offset)
                if return_path or record or auxiliary
                else None
            )
        elif impl == "sparse":
            out, nodes = sparse_fff(flat, weight_in, bias_in, weight_out, self.depth, self.trees, offset)
        elif impl in ("kernel", "triton"):  # the same ops; the device picks the implementation
            if needs_grad:
                weight_out_t = weight_out.t().contiguous()  # differentiable: its gradient is transposed back
                out, nodes, _ = ops.fff_forward(flat, weight_in, bias_in, weight_out_t, self.depth, self.trees, offset)
            elif return_path:
                with torch.no_grad():
                    out, nodes, _ = ops.fff_forward(
                        flat, weight_in, bias_in, self._weight_out_t(weight_out), self.depth, self.trees, offset
                    )
            else:  # inference without the path (on CPU the hot path above has usually taken it)
                with torch.no_grad():
                    weight_out_t = self._weight_out_t(weight_out)
                    out = ops.fff_infer(flat, weight_in, bias_in, weight_out_t, self.depth, self.trees, offset)
        else:  # "walk"
            if needs_grad:
                raise RuntimeError(
                    "FFF impl='walk' is inference-only; use 'sparse' or 'auto' when gradients are needed"
                )
            with torch.no_grad():
                out, nodes, _ = walk_forward(
                    flat, weight_in, bias_in, self._weight_out_t(weight_out), self.depth, self.trees, offset
                )
        if record:
            self._record_visits(nodes)
        if auxiliary:
            loss = self.balance_loss * routing_balance_loss(flat, weight_in, bias_in, nodes, self.depth)
            self.routing_loss = loss if self.routing_loss is None else self.routing_loss + loss
        out = out.reshape(*lead, self.width)
        if return_path:
            return out, nodes.reshape(*lead, self.trees, self.depth + 1)
        return out

    def visited_nodes(self, x: Tensor) -> Tensor:
        """Global node indices ``(..., trees, depth+1)`` that each token of ``x`` visits (no grad)."""
        self._check_input(x, self.linear_in.weight)
        flat = x.reshape(-1, self.width)
        nodes = visited_nodes_reference(
            flat, self.linear_in.weight, self.linear_in.bias, self.depth, self.trees, self.routing_offset
        )
        return nodes.reshape(*x.shape[:-1], self.trees, self.depth + 1)

    def _record_visits(self, nodes: Tensor) -> None:
        """Add the visit counts of ``nodes`` (global indices ``(tokens, ...)``) to ``routing_visits``, of the tokens
        ``visit_tokens`` selects where it is set."""
        with torch.no_grad():
            if self.visit_tokens is not None:
                keep = self.visit_tokens.reshape(-1)
                if keep.numel() != nodes.shape[0]:
                    raise ValueError(
                        f"FFF visit_tokens selects among {keep.numel()} tokens, but the forward had {nodes.shape[0]}"
                    )
                nodes = nodes[keep.to(device=nodes.device, dtype=torch.bool)]
            counts = torch.bincount(nodes.reshape(-1), minlength=self.linear_in.out_features)
        self.routing_visits = counts if self.routing_visits is None else self.routing_visits + counts

    def resolve_impl(self, x: Tensor) -> str:
        """The path ``forward`` takes for ``x``: ``impl`` itself unless it is ``"auto"``."""
        impl = self._impl
        if impl == "auto":
            if x.dtype in KERNEL_DTYPES:
                if x.is_cpu and kernels.available():
                    return "kernel"
                if not x.is_cpu and x.device.type in TRITON_DEVICES:
                    return "triton"
            return "sparse" if self._needs_grad(x) else "walk"
        if impl == "kernel":
            self._check_kernel_input(x)
        elif impl == "triton":
            self._check_triton_input(x)
        return impl

    @staticmethod
    def _check_kernel_input(x: Tensor) -> None:
        if x.dtype not in KERNEL_DTYPES or not x.is_cpu or not kernels.available():
            state = "built" if kernels.available() else "unavailable (see the warning above)"
            raise RuntimeError(
                f"FFF impl='kernel' needs a float32/bfloat16 CPU input and the compiled kernel; got {x.dtype} on "
                f"{x.device}, kernel {state}. Use impl='auto' to fall back to the PyTorch paths."
            )

    @staticmethod
    def _check_triton_input(x: Tensor) -> None:
        if x.dtype not in KERNEL_DTYPES or x.device.type not in TRITON_DEVICES:
            devices = ", ".join(sorted(TRITON_DEVICES)) or "none: needs torch with CUDA and Triton installed"
            raise RuntimeError(
                f"FFF impl='triton' needs a float32/bfloat16 input on a device with the Triton kernels ({devices}); "
                f"got {x.dtype} on {x.device}. Use impl='auto' to fall back to the PyTorch paths."
            )

    def _needs_grad(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _parameter_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``linear_in.weight``, ``linear_in.bias``, ``linear_out.weight``, read from the parameter dicts directly:
        ``nn.Module.__getattr__`` costs about half a microsecond a lookup, a tenth of a one-token forward."""
        linear_in, linear_out = self._modules["linear_in"], self._modules["linear_out"]
        return linear_in._parameters["weight"], linear_in._parameters["bias"], linear_out._parameters["weight"]

    def _weight_out_t(self, weight: Tensor | None = None) -> Tensor:
        """``linear_out.weight.T`` as a contiguous ``(K*n, width)`` tensor, cached until the weight changes (its
        storage, version counter or dtype), so inference does not pay a full-matrix transpose per call. While
        ``torch.compile`` or ``torch.export`` traces, the weight has no storage to key on (and Dynamo cannot
        compare data pointers): the transpose goes into the graph (where a compiler can fold it into a constant)."""
        if weight is None:
            weight = self.linear_out.weight
        if is_compiling():  # bound at import: 90 ns a call on the inference hot path, 120 ns via torch.compiler
            return weight.t().contiguous()
        cache = self._weight_out_t_cache
        try:
            key = (weight.data_ptr(), weight._version, weight.dtype)
        except RuntimeError:  # an inference tensor (a layer built under torch.inference_mode) has no version counter
            return weight.t().contiguous()
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, weight.t().contiguous())
            self._weight_out_t_cache = cache
        return cache[1]

    def _check_input(self, x: Tensor, weight: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"FFF expects a torch.Tensor of shape (..., {self.width}), got {type(x).__name__}")
        shape = x.shape
        if not shape or shape[-1] != self.width:
            raise ValueError(f"FFF expects input of shape (..., {self.width}), got {tuple(shape)}")
        dtype = x.dtype
        if dtype is not weight.dtype or dtype not in SUPPORTED_DTYPES:
            if dtype not in SUPPORTED_DTYPES:
                names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
                raise TypeError(f"FFF expects a floating-point input ({names}), got {dtype}")
            raise TypeError(
                f"FFF input dtype {dtype} does not match its parameters' dtype {weight.dtype}; "
                "convert one of them (e.g. layer.to(x.dtype))"
            )
        if not (x.is_cpu and weight.is_cpu) and x.device != weight.device:
            raise ValueError(f"FFF input is on {x.device} but its parameters are on {weight.device}")
