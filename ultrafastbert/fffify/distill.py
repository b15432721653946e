"""Distillation data and training: each FFF learns its dense feedforward's output on that layer's real inputs.

``capture`` runs the dense model once over tokenised text and keeps, per layer, the feedforward's input (the
attention block's output) and its output (``output.dense``, bias included), for real tokens only. Layer-wise
distillation then fits each FFF (and its output bias) to its layer's pairs, independently of the other layers:
the inputs are the dense model's, so an error in one layer does not move the next layer's data. The optional
end-to-end stage trains all FFFs together so that the converted model's final hidden states match the dense
model's (every other weight frozen).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..progress import progress
from .source import ff_modules


@dataclass
class Batches:
    """Tokenised texts: ``input_ids``/``attention_mask`` ``(N, S)`` (and ``token_type_ids`` zeros)."""

    input_ids: Tensor
    attention_mask: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids[start:stop], "attention_mask": self.attention_mask[start:stop]}

    def take(self, rows: Tensor) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids[rows], "attention_mask": self.attention_mask[rows]}

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def tokenize(tokenizer, texts: list[str], seq_len: int) -> Batches:
    encoded = tokenizer(texts, truncation=True, max_length=seq_len, padding="longest", return_tensors="pt")
    return Batches(encoded["input_ids"], encoded["attention_mask"])


def texts_for_tokens(tokenizer, texts: list[str], tokens: int, seq_len: int) -> list[str]:
    """The first texts of ``texts`` that hold at least ``tokens`` tokens together (each truncated to ``seq_len``)."""
    chosen, total = [], 0
    for start in range(0, len(texts), 256):
        block = texts[start : start + 256]
        lengths = [len(ids) for ids in tokenizer(block, truncation=True, max_length=seq_len)["input_ids"]]
        for text, length in zip(block, lengths, strict=True):
            chosen.append(text)
            total += length
            if total >= tokens:
                return chosen
    return chosen


@torch.no_grad()
def capture(model: nn.Module, data: Batches, batch_size: int = 32) -> list[tuple[Tensor, Tensor]]:
    """Per layer, ``(X, Y)``: the feedforward's inputs and outputs ``(T, H)`` (float32) over the real tokens of
    ``data``, from one eval-mode pass of the dense ``model``."""
    layers = ff_modules(model)
    inputs: list[list[Tensor]] = [[] for _ in layers]
    outputs: list[list[Tensor]] = [[] for _ in layers]
    keep: list[Tensor] = []
    hooks = []
    for index, layer in enumerate(layers):
        hooks.append(
            layer.intermediate.register_forward_pre_hook(
                lambda _module, args, index=index: inputs[index].append(args[0][keep[-1]].float())
            )
        )
        hooks.append(
            layer.output.dense.register_forward_hook(
                lambda _module, _args, out, index=index: outputs[index].append(out[keep[-1]].float())
            )
        )
    try:
        model.eval()
        for start in range(0, len(data), batch_size):
            batch = data.slice(start, start + batch_size)
            keep.append(batch["attention_mask"].bool())
            model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return [(torch.cat(x), torch.cat(y)) for x, y in zip(inputs, outputs, strict=True)]


def r_squared(prediction: Tensor, target: Tensor) -> float:
    """``1 - SSE / SST`` over all features (SST around each feature's mean): the share of the output's variance
    the prediction explains."""
    residual = float(((prediction - target) ** 2).sum())
    total = float(((target - target.mean(0)) ** 2).sum())
    return 1.0 - residual / total if total > 0 else float("nan")


@torch.no_grad()
def layer_r_squared(fff: nn.Module, bias: Tensor, X: Tensor, Y: Tensor, chunk: int = 16384) -> float:
    prediction = torch.cat([fff(X[s : s + chunk]) + bias for s in range(0, X.shape[0], chunk)])
    return r_squared(prediction, Y)


def distill_layer(
    fff: nn.Module,
    bias: nn.Parameter,
    X: Tensor,
    Y: Tensor,
    steps: int,
    lr: float,
    batch_tokens: int,
    generator: torch.Generator,
    deadline: float | None = None,
    description: str = "layer",
    show_progress: bool = True,
) -> int:
    """Adam on the mean squared error of ``fff(x) + bias`` against ``y`` over random token batches, cosine decay
    over ``steps`` (10% warm-up); stops early at ``deadline`` (``time.monotonic()``). Returns the steps run."""
    parameters = [*fff.parameters(), bias]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scale = float(Y.var(0).mean())  # loss in units of the output's variance (1.0 = predicting the mean)
    fff.train()
    bar = progress(steps, description, enabled=show_progress)
    step = 0
    for step in range(1, steps + 1):
        rows = torch.randint(0, X.shape[0], (batch_tokens,), generator=generator)
        loss = F.mse_loss(fff(X[rows]) + bias, Y[rows]) / scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if deadline is not None and time.monotonic() >= deadline:
            break
    bar.close()
    fff.eval()
    return step


def mean_pooled(model: nn.Module, data: Batches, batch_size: int = 64) -> Tensor:
    """Mean over real tokens of the final hidden states ``(N, H)``: the sentence embedding of all-MiniLM and its
    kin."""
    encoder = getattr(model, "bert", model)
    pooled = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.slice(start, start + batch_size)
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))
    return torch.cat(pooled)


def end_to_end_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What end-to-end distillation trains: every FFF's parameters and each layer's output bias, except a grouped
    layer's routing nodes (``router_*``: their hard decisions pass no gradient, so they keep the routing the
    conversion fitted; the leaves, the shared leaf and the biases move under it)."""
    return [
        parameter
        for name, parameter in model.named_parameters()
        if (".intermediate.fff." in name and ".intermediate.fff.router_" not in name)
        or (name.endswith(".output.bias") and ".layer." in name)
    ]


def hidden_state_error(hidden: Tensor, target: Tensor) -> Tensor:
    """The end-to-end objective on final hidden states of real tokens, ``(T, H)`` each: mean squared error over the
    target's mean per-feature variance (0: identical; 1: as far as predicting the target's mean state)."""
    return F.mse_loss(hidden, target) / target.var(0).mean()


@torch.no_grad()
def hidden_state_distance(student: nn.Module, teacher: nn.Module, data: Batches, batch_size: int = 64) -> float:
    """:func:`hidden_state_error` of ``student`` against ``teacher`` over every real token of ``data``."""
    student_encoder, teacher_encoder = getattr(student, "bert", student), getattr(teacher, "bert", teacher)
    hidden, targets = [], []
    for start in range(0, len(data), batch_size):
        batch = data.slice(start, start + batch_size)
        mask = batch["attention_mask"].bool()
        hidden.append(student_encoder(**batch).last_hidden_state[mask])  # (T, H)
        targets.append(teacher_encoder(**batch).last_hidden_state[mask])
    return float(hidden_state_error(torch.cat(hidden), torch.cat(targets)))


def distill_end_to_end(
    student: nn.Module,
    teacher: nn.Module,
    data: Batches,
    steps: int,
    lr: float,
    batch: int,
    generator: torch.Generator,
    deadline: float | None = None,
    show_progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> int:
    """Train the feedforwards of ``student`` (``end_to_end_parameters``; all else frozen) so its final hidden
    states match ``teacher``'s on real tokens (mean squared error over the teacher's variance). Returns the steps
    run."""
    trainable = end_to_end_parameters(student)
    frozen = {name: parameter.requires_grad for name, parameter in student.named_parameters()}
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    student_encoder, teacher_encoder = getattr(student, "bert", student), getattr(teacher, "bert", teacher)
    student.train()
    for module in student.modules():  # no dropout: the target is the deterministic teacher
        if isinstance(module, nn.Dropout):
            module.eval()
    bar = progress(steps, "end to end", enabled=show_progress)
    step = 0
    try:
        for step in range(1, steps + 1):
            rows = torch.randint(0, len(data), (batch,), generator=generator)
            inputs = data.take(rows)
            with torch.no_grad():
                target = teacher_encoder(**inputs).last_hidden_state
            hidden = student_encoder(**inputs).last_hidden_state
            mask = inputs["attention_mask"].bool()
            loss = hidden_state_error(hidden[mask], target[mask])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if on_step is not None:
                on_step(step, loss.item())
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        bar.close()
        for name, parameter in student.named_parameters():
            parameter.requires_grad_(frozen[name])
        student.eval()
    return step
