"""Language-model pretraining with the crammed recipe (``docs/design.md``): masked-LM for the encoders, or
next-token prediction (``objective="causal"``) for causal decoders, through the same loop, budgets and checkpoints.

The loop is deterministic given the seed: the global order of sequences is a seeded permutation per epoch, and
each sequence's mask (causal batches have none) is drawn from a generator seeded by its global position. A run
therefore resumes exactly from a checkpoint, and ``N`` processes with micro-batch ``b`` see exactly the sequences
and masks one process with micro-batch ``N*b`` sees. The loss of an optimizer step is the sum over every
predicted token of the step (masked ones; for a causal LM every token but each sequence's first) divided by their
global count, so both set-ups compute the same gradients.

A step whose loss or gradient norm is not finite updates nothing; more than ``max_nonfinite_steps`` of them in a
row stop the run with :class:`TrainingDivergedError`, and non-finite weights are never saved, so the last
checkpoint stays the last good one.

A finished run (its budget spent) continues with a larger ``max_steps``: the added steps are a new *segment* of
the schedule, with its own learning-rate triangle over them (a warm restart) at the final batch size. An ordinary
resume stays within its segment and is exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.causal import predicted_tokens
from ..fff import FFF
from ..fff.balance import count_visits_at, move_routing_offsets, take_routing_loss, take_routing_visits
from ..model.crammedbert.modeling import CrammedBertForMaskedLM, CrammedBertScaledSinusoidalPositions
from ..model.health import health_postfix, health_record, tree_health
from ..progress import progress as progress_bar
from .checkpointing import CheckpointError, latest_checkpoint, load_checkpoint, read_training_state, save_checkpoint
from .config import PretrainConfig
from .distributed import DistributedContext, all_reduce_sum, broadcast_flag, wrap_model
from .optim import build_adamw
from .run_folder import remove_stale_temporaries
from .schedule import BatchRamp, Budget, TriangleSchedule

logger = logging.getLogger(__name__)

# (token ids (B, S), one generator per sequence) -> (input ids, labels with -100 where not masked)
Masker = Callable[[Tensor, Sequence[torch.Generator]], tuple[Tensor, Tensor]]

# What a model learns to predict: masked tokens ("mlm", the masker chooses them) or every next token ("causal",
# with data.causal.causal_rows as the masker: labels are the inputs, which the model shifts by one).
OBJECTIVES = ("mlm", "causal")

# what a Pretrainer writes in its output folder
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


class TrainingDivergedError(RuntimeError):
    """The loss or gradient norm stopped being finite (or the loss exploded), or the weights did; the run stopped
    without saving."""


# A masked-LM loss above this many times that of a uniform guess (ln of the vocabulary size) has exploded: a
# diverging run can climb to 1e9 and more while every number stays finite, and no trained model starts there.
EXPLODED_LOSS_FACTOR = 100.0


def exploded_loss_limit(model: nn.Module) -> float:
    """The loss above which a step of ``model`` counts as exploded (infinite when its vocabulary is unknown)."""
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    return EXPLODED_LOSS_FACTOR * math.log(vocab_size) if vocab_size and vocab_size > 1 else math.inf


# Keys of the compared run configuration that a resumed run may change: the software's description of itself
# (a library upgrade changes no weight), the time budget, and settings that decide when the run saves, evaluates
# or logs or what it does after a non-finite step, not what an optimizer step computes.
RESUME_MAY_CHANGE = frozenset(
    {"transformers_version", "auto_map"}
    | {setting.name for setting in fields(PretrainConfig) if setting.metadata.get("resume_may_change")}
)


class SequenceOrder:
    """Global sequence order: a seeded permutation per epoch, concatenated; positions count sequences consumed."""

    def __init__(self, num_sequences: int, seed: int) -> None:
        if num_sequences < 1:
            raise ValueError("the training set has no sequences")
        self.num_sequences, self.seed = num_sequences, seed
        self._epoch, self._permutation = -1, torch.empty(0, dtype=torch.long)

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_sequences)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._permutation = epoch, torch.randperm(self.num_sequences, generator=generator)
        return int(self._permutation[offset])


def mask_generators(seed: int, positions: Sequence[int]) -> list[torch.Generator]:
    """One generator per sequence, seeded by its global position, so masks do not depend on batch layout."""
    return [torch.Generator().manual_seed((seed + 1) * 2_654_435_761 + position) for position in positions]


@torch.no_grad()
def mlm_metrics(
    model: nn.Module,
    sequences: Sequence[Tensor],
    masker: Masker,
    batch_size: int,
    seed: int = 0,
    max_sequences: int | None = None,
) -> dict[str, float]:
    """MLM loss and accuracy over masked tokens, with masks fixed by ``seed`` (the same at every evaluation).

    ``val_accuracy_replaced`` counts only the masked tokens whose input was replaced ([MASK] or a random token):
    the 10% left unchanged can be copied from the input, which alone is worth ~10 points of ``val_accuracy``."""
    model.eval()
    device = next(model.parameters()).device
    count = len(sequences) if max_sequences is None else min(max_sequences, len(sequences))
    loss_sum, correct, masked, correct_replaced, replaced = 0.0, 0, 0, 0, 0
    for start in range(0, count, batch_size):
        positions = list(range(start, min(count, start + batch_size)))
        ids = torch.stack([sequences[p] for p in positions])
        inputs, labels = masker(ids, mask_generators(seed + 7919, positions))
        inputs, labels = inputs.to(device), labels.to(device)
        labelled = labels != -100
        targets, was_replaced = labels[labelled], (inputs != labels)[labelled]
        if isinstance(model, CrammedBertForMaskedLM):  # its decoder runs on the masked positions only
            predictions = model(input_ids=inputs, labels=labels, sparse_prediction=True).logits.float()
        else:  # another masked LM (a converted BERT): the full logits, read at the masked positions
            predictions = model(input_ids=inputs).logits[labelled].float()
        loss_sum += nn.functional.cross_entropy(predictions, targets, reduction="sum").item()
        hits = predictions.argmax(-1) == targets
        correct += int(hits.sum())
        correct_replaced += int(hits[was_replaced].sum())
        masked += targets.numel()
        replaced += int(was_replaced.sum())
    masked, replaced = max(masked, 1), max(replaced, 1)
    return {
        "val_loss": loss_sum / masked,
        "val_accuracy": correct / masked,
        "val_accuracy_replaced": correct_replaced / replaced,
        "val_masked_tokens": masked,
    }


@torch.no_grad()
def causal_lm_metrics(
    model: nn.Module, sequences: Sequence[Tensor], batch_size: int, max_sequences: int | None = None
) -> dict[str, float]:
    """Next-token loss (mean over every predicted token: all but each sequence's first), its perplexity
    (``exp`` of that mean) and top-1 accuracy, over the first ``max_sequences`` of ``sequences``."""
    model.eval()
    device = next(model.parameters()).device
    count = len(sequences) if max_sequences is None else min(max_sequences, len(sequences))
    loss_sum, correct, predicted = 0.0, 0, 0
    for start in range(0, count, batch_size):
        ids = torch.stack([sequences[p] for p in range(start, min(count, start + batch_size))]).to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # (B, S-1, V): t predicts t+1
        targets = ids[:, 1:]
        loss_sum += nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        correct += int((logits.argmax(-1) == targets).sum())
        predicted += targets.numel()
    mean = loss_sum / max(predicted, 1)
    return {
        "val_loss": mean,
        "val_perplexity": math.exp(mean) if mean < math.log(sys.float_info.max) else math.inf,
        "val_accuracy": correct / max(predicted, 1),
        "val_predicted_tokens": predicted,
    }


@dataclass
class StepStats:
    loss: float
    grad_norm: float
    skipped: bool  # not finite: no update
    masked_tokens: int
    sequences: int
    tokens: int


class Pretrainer:
    """Runs, checkpoints and resumes one pretraining run of ``model`` on packed token sequences: masked-LM, or with
    ``objective="causal"`` next-token prediction (a causal LM taking ``labels``; ``masker`` is then
    :func:`~ultrafastbert.data.causal.causal_rows`)."""

    def __init__(
        self,
        model: nn.Module,
        train_sequences: Sequence[Tensor],
        masker: Masker,
        config: PretrainConfig,
        output_dir: str | Path,
        context: DistributedContext | None = None,
        validation_sequences: Sequence[Tensor] | None = None,
        run_config: dict[str, Any] | None = None,
        objective: str = "mlm",
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.objective = objective
        self.context = context or DistributedContext()
        self.loss_limit = exploded_loss_limit(model)
        if not config.train_position_scale:
            for module in model.modules():
                if isinstance(module, CrammedBertScaledSinusoidalPositions):
                    module.scale_factor.requires_grad_(False)
        self.model = model.to(self.context.device)
        self.ddp_model = wrap_model(self.model, self.context)
        self.train_sequences, self.validation_sequences = train_sequences, validation_sequences
        self.masker, self.config = masker, config
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / CHECKPOINTS
        self.run_config = run_config or {}
        self.optimizer = build_adamw(model, config.lr, config.betas, config.eps, config.weight_decay)
        self.schedule = TriangleSchedule(config.lr_start_factor, config.lr_peak_at)
        # final_batch counts sequences per optimizer step over all processes
        self.ramp = BatchRamp(config.micro_batch * self.context.world_size, config.final_batch, config.batch_ramp_until)
        self.budget = config.budget
        self.order = SequenceOrder(len(train_sequences), config.seed)
        self.step, self.position, self.elapsed = 0, 0, 0.0
        self.nonfinite_in_a_row = 0
        self._stop_requested = False
        self.stop_signal: int | None = None  # the signal that asked the run to stop
        # the schedule segment this run is in: (first step, elapsed seconds at its start); (0, 0.0) but in a
        # continuation of a finished run
        self.segment_start: tuple[int, float] = (0, 0.0)
        # the step of the latest checkpoint this run saved or resumed from, and whether its budget was spent then
        self.saved_step: int | None = None
        self.saved_finished = False
        # Tree health: every FFF layer records the nodes its training tokens visit, summed here between reports.
        self.fff_layers = [module for module in self.model.modules() if isinstance(module, FFF)]
        self.tree_visits: list[Tensor] | None = None
        for layer in self.fff_layers:
            layer.record_visits = config.tree_health_every_steps > 0
        self.dropped_micro_batches: tuple[int, int] | None = None  # (done, planned) of a step the budget ended

    # --- state ---------------------------------------------------------------------------------------------
    def _checkpoint_config(self) -> dict[str, Any]:
        """The configuration a checkpoint must match to be resumed: the caller's ``run_config`` (model, data,
        recipe) and the data layout. Keys named in ``RESUME_MAY_CHANGE`` are left out of the comparison."""
        config = {"run": self.run_config, "world_size": self.context.world_size, "micro_batch": self.config.micro_batch}
        if self.objective != "mlm":  # absent for MLM, as in the checkpoints written before there was a choice
            config["objective"] = self.objective
        return config

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank checks the weights, which DDP keeps equal).

        Raises :class:`TrainingDivergedError` instead of saving weights that are not finite."""
        if not all(bool(torch.isfinite(parameter).all()) for parameter in self.model.parameters()):
            raise TrainingDivergedError(
                f"the weights are not finite after step {self.step}; not saved (the last checkpoint is kept)"
            )
        if not self.context.is_main:
            return None
        finished = self._progress() >= 1.0  # the budget is spent: a larger max_steps may continue the run
        if (self.saved_step, self.saved_finished) == (self.step, finished):  # saved already (a resumed finished
            return latest_checkpoint(self.checkpoint_dir)  # run, a stop just after a periodic save)
        state = {
            "step": self.step,
            "position": self.position,
            "elapsed": self.elapsed,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "max_steps": self.config.max_steps,
            "finished": finished,
            "segment": {"start_step": self.segment_start[0], "start_elapsed": self.segment_start[1]},
        }
        self.saved_step, self.saved_finished = self.step, finished
        return save_checkpoint(
            self.checkpoint_dir,
            self.step,
            self.model,
            self.optimizer,
            state,
            self._checkpoint_config(),
            keep=self.config.keep_checkpoints,
        )

    def resume(self) -> bool:
        """Continue from the latest checkpoint in the output directory; False when there is none."""
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        continuing = self._continues(read_training_state(path), path)
        ignored = RESUME_MAY_CHANGE | ({"max_steps"} if continuing else set())
        state = load_checkpoint(path, self.model, self.optimizer, self._checkpoint_config(), ignored)
        self.step, self.position, self.elapsed = state["step"], state["position"], state["elapsed"]
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)  # absent from checkpoints of older versions
        segment = state.get("segment", {"start_step": 0, "start_elapsed": 0.0})
        self.segment_start = (
            (self.step, self.elapsed) if continuing else (segment["start_step"], segment["start_elapsed"])
        )
        self.saved_step, self.saved_finished = self.step, state.get("finished", False) and not continuing
        start_step = self.segment_start[0]
        max_steps = None if self.config.max_steps is None else self.config.max_steps - start_step
        self.budget = Budget(max_steps=max_steps, max_seconds=self.config.budget.max_seconds)
        return True

    def _continues(self, saved: dict[str, Any], path: Path) -> bool:
        """Whether resuming from the checkpoint state ``saved`` continues a finished run with a larger
        ``max_steps`` (a new schedule segment); ``CheckpointError`` saying what to run for a change of
        ``max_steps`` that cannot be honoured. False for an ordinary resume (the same budget)."""
        before, now, step = saved.get("max_steps"), self.config.max_steps, saved["step"]
        if before is None or now is None or now == before:
            return False
        if not saved.get("finished"):
            raise CheckpointError(
                f"the run in {path.parent.parent} stopped at step {step} before its budget of --max-steps {before} "
                f"was spent: resume it with --max-steps {before} to finish it, then continue it with a larger "
                "--max-steps"
            )
        if now <= step:
            raise CheckpointError(
                f"the run in {path.parent.parent} has trained {step} steps, so --max-steps {now} adds none: give "
                f"more than {step} to continue it"
            )
        return True

    # --- one optimizer step --------------------------------------------------------------------------------
    def _micro_batches(self, accumulation: int) -> Iterator[tuple[Tensor, Tensor]]:
        micro, world, rank = self.config.micro_batch, self.context.world_size, self.context.rank
        for _ in range(accumulation):
            positions = list(range(self.position + rank * micro, self.position + (rank + 1) * micro))
            ids = torch.stack([self.train_sequences[self.order.index(p)] for p in positions])
            yield self.masker(ids, mask_generators(self.config.seed, positions))
            self.position += micro * world

    def train_step(self, progress: float, out_of_time: Callable[[], bool] | None = None) -> StepStats | None:
        """One optimizer step at ``progress`` of the budget. ``out_of_time`` is asked between micro-batches (all
        ranks act on one answer): when it says so the step is dropped, nothing updated and no sequence consumed,
        and ``None`` returned, so a time budget holds within a step of many micro-batches."""
        # a continuation segment trains at the final batch size: its ramp was the first segment's
        accumulation = self.ramp.accumulation_steps(progress if self.segment_start[0] == 0 else 1.0)
        start_position = self.position
        lr = self.config.lr * self.schedule.factor(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = [
            (inputs.to(self.context.device), labels.to(self.context.device))
            for inputs, labels in self._micro_batches(accumulation)
        ]
        local_counts = torch.tensor([float(self._predicted_tokens(labels)) for _, labels in batches])
        global_masked = all_reduce_sum(local_counts.sum().reshape(1).to(self.context.device), self.context)
        global_masked = max(global_masked.item(), 1.0)
        # DDP averages gradients over ranks; scaling by world size turns that average back into a global sum.
        scale = self.context.world_size / global_masked
        self.ddp_model.train()
        loss_sum = torch.zeros((), device=self.context.device)
        for index, ((inputs, labels), count) in enumerate(zip(batches, local_counts, strict=True)):
            if index and out_of_time is not None and broadcast_flag(out_of_time(), self.context):
                self.optimizer.zero_grad(set_to_none=True)
                self.position = start_position
                self.dropped_micro_batches = (index, len(batches))
                return None
            last = index == len(batches) - 1
            sync = contextlib.nullcontext() if last or not self.context.enabled else self.ddp_model.no_sync()
            # routing visits (balance, tree health) count the positions the masking left as they were (causal
            # batches: every token)
            unmasked = self.objective == "mlm" and self.config.balance_positions == "unmasked"
            with sync, count_visits_at(self.model, labels == -100 if unmasked else None):
                with torch.autocast(self.context.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
                    loss = self.ddp_model(input_ids=inputs, labels=labels, **self._forward_options()).loss
                    summed = loss.float() * count if count > 0 else loss.float() * 0.0
                objective = summed * scale
                auxiliary = take_routing_loss(self.model)  # the FFF layers' load-balancing loss, if they have one
                if auxiliary is not None:
                    objective = objective + auxiliary / len(batches)
                objective.backward()
            loss_sum += summed.detach()
        # DDP has summed the gradients and the loss is summed here, so every rank takes the same decision below
        grad_norm = self._gradient_norm()
        loss = all_reduce_sum(loss_sum.reshape(1), self.context).item() / global_masked
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm)) or loss > self.loss_limit
        if skipped:
            self.nonfinite_in_a_row += 1
        else:
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        self._balance_trees()
        if self.nonfinite_in_a_row > self.config.max_nonfinite_steps:
            raise TrainingDivergedError(
                f"training diverged at step {self.step + 1}: loss {loss}, gradient norm {grad_norm} "
                f"({self.nonfinite_in_a_row} non-finite or exploded step(s) in a row, "
                f"{self.config.max_nonfinite_steps} allowed); "
                "nothing saved after the last checkpoint; lower the learning rate"
            )
        self.step += 1
        world = self.context.world_size
        return StepStats(
            loss=loss,
            grad_norm=grad_norm,
            skipped=skipped,
            masked_tokens=int(global_masked),
            sequences=sum(inputs.shape[0] for inputs, _ in batches) * world,
            tokens=sum(inputs.numel() for inputs, _ in batches) * world,
        )

    def _predicted_tokens(self, labels: Tensor) -> int:
        """The tokens of a micro-batch the model's loss averages over (the model shifts causal labels itself)."""
        return int((labels != -100).sum()) if self.objective == "mlm" else predicted_tokens(labels)

    def _forward_options(self) -> dict[str, Any]:
        """Keyword arguments of the training forward besides inputs and labels: crammedBERT's MLM decodes the
        masked positions only; a causal LM keeps no KV cache (it is for generation)."""
        return {"sparse_prediction": True} if self.objective == "mlm" else {"use_cache": False}

    def _balance_trees(self) -> None:
        """Move balancing FFF layers' routing offsets by this step's visit counts (summed over processes), and add
        the counts to those of the next tree-health report."""
        visits = take_routing_visits(self.model, lambda counts: all_reduce_sum(counts, self.context))
        for layer, counts in visits:
            if layer.routing_offset is not None:
                move_routing_offsets(layer, counts)
        if self.config.tree_health_every_steps > 0 and len(visits) == len(self.fff_layers):
            counts = [counts for _, counts in visits]
            previous = self.tree_visits
            self.tree_visits = counts if previous is None else [a + b for a, b in zip(previous, counts, strict=True)]

    def tree_health_report(self) -> tuple[dict[str, Any], str]:
        """The tree health of the steps since the last report, as a metrics record and a progress-bar text (empty
        when there is nothing to report), and a fresh start for the next one."""
        visits, self.tree_visits = self.tree_visits, None
        if not visits:
            return {}, ""
        health = [tree_health(counts.cpu(), layer.depth) for counts, layer in zip(visits, self.fff_layers, strict=True)]
        return {"tree_health": health_record(health)}, health_postfix(health)

    def _gradient_norm(self) -> float:
        """Norm of all gradients together (as they were before clipping); clips them to ``clip_norm`` when set."""
        if self.config.clip_norm > 0:
            return float(nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm))
        return float(nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None]))

    # --- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, max_sequences: int | None = None) -> dict[str, float]:
        if not self.validation_sequences:
            return {}
        if self.objective == "causal":
            return causal_lm_metrics(self.model, self.validation_sequences, self.config.micro_batch, max_sequences)
        return mlm_metrics(
            self.model,
            self.validation_sequences,
            self.masker,
            self.config.micro_batch,
            self.config.seed,
            max_sequences,
        )

    # --- the run -------------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        def request_stop(signum: int, _frame: object) -> None:
            self._stop_requested = True
            self.stop_signal = signum

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                previous[signum] = signal.signal(signum, request_stop)
        return previous

    def _progress(self) -> float:
        """The share of the current schedule segment's budget spent (the whole run's but in a continuation)."""
        start_step, start_elapsed = self.segment_start
        return self.budget.progress(self.step - start_step, self.elapsed - start_elapsed)

    def _log(self, record: dict[str, Any]) -> None:
        if self.context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / METRICS, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def run(self) -> dict[str, Any]:
        """Train until the budget is spent (or SIGINT/SIGTERM: checkpoint, then return); checkpoint at the end.

        Raises :class:`TrainingDivergedError` when training diverges (see the module's docstring) and ``OSError``
        when a checkpoint cannot be written (a full disk); either way the last checkpoint is left intact."""
        if self.context.is_main:
            for path in remove_stale_temporaries(self.checkpoint_dir):
                logger.info("removed %s, left by a process that no longer runs", path)
        previous_handlers = self._install_signal_handlers()
        started = time.perf_counter() - self.elapsed
        max_seconds = self.budget.max_seconds

        def out_of_time() -> bool:
            return max_seconds is not None and time.perf_counter() - started - self.segment_start[1] >= max_seconds

        last_checkpoint = time.perf_counter()
        trees = ""  # the last tree-health summary, kept in the progress bar between reports
        total = self.config.max_steps if self.config.max_steps is not None else None
        bar = progress_bar(total, "pretraining", "step", initial=self.step, enabled=self.context.is_main, leave=True)
        interrupted = False
        try:
            while True:
                self.elapsed = time.perf_counter() - started
                progress = self._progress()
                if progress >= 1.0:
                    break
                step_started = time.perf_counter()
                stats = self.train_step(progress, out_of_time)
                self.elapsed = time.perf_counter() - started
                if stats is None:
                    done, planned = self.dropped_micro_batches or (0, 0)
                    logger.info(
                        "the time budget ran out within step %d (%d of %d micro-batches done): that step was dropped",
                        self.step + 1,
                        done,
                        planned,
                    )
                    break
                record = {
                    "step": self.step,
                    # strict JSON has no NaN: a non-finite value (a skipped step) is written as null
                    "loss": stats.loss if math.isfinite(stats.loss) else None,
                    "grad_norm": stats.grad_norm if math.isfinite(stats.grad_norm) else None,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "batch_sequences": stats.sequences,
                    "tokens_per_second": stats.tokens / max(1e-9, time.perf_counter() - step_started),
                    "elapsed": self.elapsed,
                    "progress": progress,
                }
                if stats.skipped:
                    record["skipped"] = True
                if self.config.eval_every_steps and self.step % self.config.eval_every_steps == 0:
                    record |= self.evaluate()
                every = self.config.tree_health_every_steps
                if every > 0 and self.step % every == 0:
                    health, trees = self.tree_health_report()
                    record |= health
                if self.step % self.config.log_every_steps == 0 or "val_loss" in record or "tree_health" in record:
                    self._log(record)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{stats.loss:.3f}",
                    tok_s=f"{record['tokens_per_second']:.0f}",
                    eta=_eta(progress, self.elapsed - self.segment_start[1]),
                    **({"trees": trees} if trees else {}),
                )
                if broadcast_flag(self._stop_requested, self.context):
                    interrupted = True
                    break
                if time.perf_counter() - last_checkpoint >= self.config.checkpoint_every_minutes * 60:
                    self.save()
                    last_checkpoint = time.perf_counter()
        finally:
            bar.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        checkpoint = self.save()
        final = {
            "step": self.step,
            "elapsed": self.elapsed,
            "interrupted": interrupted,
            "signal": self.stop_signal if interrupted else None,
            "checkpoint": str(checkpoint) if checkpoint else None,
        }
        if not interrupted:
            final |= self.evaluate()
        self._log({"final": final})
        return final


def _eta(progress: float, elapsed: float) -> str:
    if progress <= 0:
        return "?"
    seconds = elapsed / progress * (1 - progress)
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
