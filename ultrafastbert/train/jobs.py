"""Whole jobs, wired from the parts: data -> tokenizer -> model -> loop -> saved folder. Used by the CLI and demo.

``pretrain_job``: a corpus (yours, or the embedded default) to a pretrained model folder (``save_pretrained`` +
tokenizer) with checkpoints and metrics, masked-LM for an encoder preset and next-token prediction for a causal
decoder preset (``model_config_for_preset``), in a run folder it locks while it writes there and never starts over an
old run unless told to resume or replace it. ``finetune_job``: a pretrained folder and named tasks or your own
files to finetuned model folders and per-task scores (median over seeds), after checking everything it can
before the first task trains. ``mlm_validation``: masked-LM loss and accuracy of a pretrained folder. Model
folders are built beside their destination and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from ..cache import cache_root
from ..data import (
    MLMCollator,
    corpus_from_paths,
    load_glue_task,
    packed_dataset,
    prepare_default_data,
    tokenizer_for_corpus,
)
from ..data.causal import causal_rows
from ..data.corpus import Corpus
from ..data.tasks import LOCAL_TASKS, TaskData, load_local_task, task_name
from ..data.tokenizer import tokenizer_fingerprint
from ..data.userdata import UserFiles
from ..model import AutoConfig, load_tokenizer
from ..model.crammedbert.configuration import PRESET_NAMES, CrammedBertConfig, preset_fields
from ..model.crammedbert.convert import convert_checkpoint, model_class_for
from ..model.crammedbert.modeling import CrammedBertForMaskedLM
from ..model.health import TreeHealth, model_tree_health
from ..model.inference import load_masked_lm
from ..model.ultrafastgpt.modeling import (
    DECODER_PRESET_FEEDFORWARDS,
    DECODER_PRESET_NAMES,
    UltraFastGPTConfig,
    UltraFastGPTForCausalLM,
    decoder_preset_fields,
)
from ..progress import status
from .checkpointing import holds_checkpoints
from .config import PretrainJob
from .distributed import DistributedContext, barrier, init_distributed, shutdown
from .finetune import (
    FinetuneConfig,
    TaskResult,
    finetune_task,
    predict,
    results_table,
    task_collator,
    write_results,
)
from .generation import holds_causal_lm
from .pretrain import CHECKPOINTS, METRICS, Pretrainer, causal_lm_metrics, mlm_metrics
from .run_folder import LOCK, RunFolderError, publish_folder, run_folder_lock, staging_folder

logger = logging.getLogger(__name__)

# what pretrain_job writes in the run folder besides the Pretrainer's checkpoints and metrics
MODEL = "model"
FINAL = "final.json"


# a final batch above this many sequences is GPU scale: pretraining on a CPU warns
CPU_BATCH = 512
PRETRAINING = "pretraining.json"  # in a pretrained model folder: the text it learned from (read by evaluate)


def save_model_folder(
    model: Any, tokenizer: Any, destination: str | Path, pretraining: dict[str, Any] | None = None
) -> None:
    """``save_pretrained`` of the model and its tokenizer (and ``pretraining`` as ``pretraining.json``) into
    ``destination``, built beside it and renamed into place: a kill at any instant leaves the previous folder (or
    none), never a model without its tokenizer."""
    staging = staging_folder(destination)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if pretraining is not None:
            (staging / PRETRAINING).write_text(json.dumps(pretraining, indent=2) + "\n")
        publish_folder(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert_folder(source: str | Path, destination: str | Path, to: str = "clean", overwrite: bool = False) -> Path:
    """``ultrafastbert convert``: :func:`convert_checkpoint` into a folder built beside ``destination`` and renamed
    into place, so a failure (a full disk) or a kill leaves the old folder or none, never a lone ``config.json``.
    A non-empty ``destination`` needs ``overwrite``; the source's own folder, one inside it and one holding it are
    refused (:class:`RunFolderError`)."""
    check_output_folder(destination, source, overwrite, flag="destination")
    staging = staging_folder(destination)
    try:
        convert_checkpoint(source, staging, to=to)
        publish_folder(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Path(destination)


def model_config_for_preset(preset: str, **overrides: Any) -> CrammedBertConfig | UltraFastGPTConfig:
    """The model config of ``preset``, an encoder preset (crammedBERT/UltraFastBERT, pretrained as a masked LM) or
    a causal decoder preset (UltraFastGPT, pretrained on next-token prediction); ``overrides`` replace fields. A
    ``ValueError`` listing both families for an unknown name, or naming the field a preset cannot be built with."""
    try:
        return UltraFastGPTConfig(**{**decoder_preset_fields(preset), **overrides})
    except ValueError as error:
        if not str(error).startswith("unknown decoder preset"):
            raise
    try:
        fields = preset_fields(preset)
    except ValueError:
        raise ValueError(
            f"unknown model preset {preset!r}; encoders (masked LM): {', '.join(PRESET_NAMES)}; causal decoders: "
            f"{', '.join(DECODER_PRESET_NAMES)} with FF one of {', '.join(DECODER_PRESET_FEEDFORWARDS)}"
        ) from None
    return CrammedBertConfig(**{**fields, **overrides})


def load_corpus_for(job: PretrainJob, cache: Path) -> Corpus:
    if job.corpus:
        return corpus_from_paths(job.corpus, cache)
    return prepare_default_data(cache).corpus


def _pretraining_record(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / PRETRAINING
    return json.loads(path.read_text()) if path.is_file() else {}


def recorded_seq_len(model_dir: str | Path) -> int | None:
    """The sequence length the model in ``model_dir`` was pretrained with, when its folder records it."""
    return _pretraining_record(model_dir).get("seq_len")


def evaluation_corpus(model_dir: str | Path, corpus: Sequence[str], cache: Path) -> tuple[Corpus, str]:
    """The corpus to score a pretrained model on, and a line saying which it is: ``corpus`` when given, else the
    text the model was pretrained on as its folder records it (``pretraining.json``), else the embedded corpus.
    A ``ValueError`` when the recorded files are gone."""
    if corpus:
        return corpus_from_paths(corpus, cache), f"corpus: {' '.join(corpus)} (--corpus)"
    record = _pretraining_record(model_dir)
    if "corpus" not in record:
        return prepare_default_data(cache).corpus, (
            "corpus: the embedded corpus (the model folder does not record its pretraining text; --corpus FILES "
            "scores other text)"
        )
    recorded = record["corpus"]
    if not recorded:
        return prepare_default_data(cache).corpus, "corpus: the embedded corpus, the model's pretraining text"
    missing = [path for path in recorded if not Path(path).exists()]
    if missing:
        raise ValueError(
            f"the model was pretrained on {' '.join(recorded)} (as {Path(model_dir) / PRETRAINING} records), and "
            f"{' '.join(missing)} is not there now: give the text to score with --corpus FILES"
        )
    return corpus_from_paths(recorded, cache), f"corpus: {' '.join(recorded)}, the model's pretraining text"


def claim_run_folder(job: PretrainJob) -> None:
    """Check that ``job`` may start in its run folder: a folder holding a run (checkpoints or metrics) is resumed
    with ``resume``, emptied of that run with ``overwrite``, and otherwise refused with :class:`RunFolderError`,
    since a new run would mix its metrics and checkpoints with the old run's."""
    output = Path(job.output_dir)
    if job.resume and job.overwrite:
        raise RunFolderError("--resume continues the run in --output and --overwrite deletes it: pass one of them")
    found = [f"{CHECKPOINTS}/"] if holds_checkpoints(output / CHECKPOINTS) else []
    found += [METRICS] if (output / METRICS).exists() else []
    if not found or job.resume:
        return
    if not job.overwrite:
        raise RunFolderError(
            f"{output} already holds a run ({', '.join(found)}): pass --resume to continue it, choose another "
            "--output, or pass --overwrite to delete it"
        )
    for name in (CHECKPOINTS, MODEL):
        shutil.rmtree(output / name, ignore_errors=True)
    for name in (METRICS, FINAL):
        (output / name).unlink(missing_ok=True)
    logger.info("deleted the previous run in %s (--overwrite)", output)


def pretrain_job(job: PretrainJob, context: DistributedContext | None = None) -> dict[str, Any]:
    """Pretrain per ``job``; returns the final record (step, time, validation loss/accuracy, model folder).

    Rank 0 holds the run folder's lock for the whole job and checks the folder (``claim_run_folder``) before any
    work, so a second job on the same folder, or a new run over an old one, fails at once with
    :class:`RunFolderError`."""
    own_context = context is None
    context = context or init_distributed(job.device)
    try:
        with run_folder_lock(job.output_dir) if context.is_main else contextlib.nullcontext():
            if context.is_main:
                claim_run_folder(job)
            return _pretrain(job, context)
    finally:
        if own_context:
            shutdown(context)


def _pretrain(job: PretrainJob, context: DistributedContext) -> dict[str, Any]:
    cache = Path(job.cache_dir) if job.cache_dir else cache_root()
    if context.is_main and context.device.type == "cpu" and job.train.final_batch > CPU_BATCH:
        passes = math.ceil(job.train.final_batch / (job.train.micro_batch * context.world_size))
        logger.warning(
            "warning: --batch %d is the recipe's GPU-scale optimizer step: %d forward and backward passes of "
            "--micro-batch %d, minutes per step on a CPU. CPU runs fit --micro-batch 32 --batch 64 (and --vocab-size "
            "8192); --max-minutes holds either way.",
            job.train.final_batch,
            passes,
            job.train.micro_batch,
        )
    # rank 0 builds the caches (corpus, tokenizer, packed sequences) first; the others then read them
    if not context.is_main:
        barrier(context)
    else:
        status(
            "preparing the data: corpus, tokenizer, packed sequences (built once and cached; the embedded corpus is "
            "fetched on first use, about a minute)"
        )
    data_started = time.monotonic()
    corpus = load_corpus_for(job, cache)
    tokenizer = (
        load_tokenizer(job.tokenizer)
        if job.tokenizer
        else tokenizer_for_corpus(corpus, job.vocab_size, cache, model_max_length=job.seq_len)
    )
    train_data = packed_dataset(corpus, tokenizer, "train", job.seq_len, cache)
    validation_data = packed_dataset(corpus, tokenizer, "validation", job.seq_len, cache)
    if context.is_main:
        status(
            f"data ready in {time.monotonic() - data_started:.0f} s: {len(train_data):,} training sequences of "
            f"{job.seq_len} tokens, vocabulary {len(tokenizer):,}"
        )
        barrier(context)
    model_config = model_config_for_preset(
        job.preset,
        vocab_size=len(tokenizer),
        max_position_embeddings=job.seq_len,
        fff_balance_rate=job.fff_balance_rate,
    )
    causal = isinstance(model_config, UltraFastGPTConfig)
    if causal:  # every packed document ends with <sep>: a decoder's end of text, where generate stops
        model_config.pad_token_id, model_config.eos_token_id = tokenizer.pad_token_id, tokenizer.sep_token_id
    torch.manual_seed(job.train.seed)
    model = UltraFastGPTForCausalLM(model_config) if causal else CrammedBertForMaskedLM(model_config)
    # compared on resume, less the keys in pretrain.RESUME_MAY_CHANGE (library version, time budget, cadences)
    run_config = {
        "preset": job.preset,
        "model": model_config.to_diff_dict(),
        "seq_len": job.seq_len,
        "tokenizer_size": len(tokenizer),
        # the vocabulary itself: tokenizer training is not bit-reproducible, so a resume with another cache (or a
        # rebuilt one) can get other token ids for the same corpus and must be refused
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "corpus": corpus.content_hash,
        "train": asdict(job.train),
    }
    if job.train.balance_positions == "unmasked":  # the default: absent, as in checkpoints from before the choice
        del run_config["train"]["balance_positions"]
    trainer = Pretrainer(
        model,
        train_data,
        causal_rows if causal else MLMCollator(tokenizer, seed=job.train.seed).mask_rows,
        job.train,
        job.output_dir,
        context,
        validation_sequences=validation_data,
        run_config=json.loads(json.dumps(run_config)),
        objective="causal" if causal else "mlm",
    )
    if job.resume and trainer.resume() and context.is_main:
        logger.info("resumed from step %d", trainer.step)
    final = trainer.run()
    if context.is_main:
        model_dir = Path(job.output_dir) / MODEL
        pretraining = {"corpus": [str(Path(path).resolve()) for path in job.corpus], "seq_len": job.seq_len}
        save_model_folder(model, tokenizer, model_dir, pretraining)
        final |= {
            "model_dir": str(model_dir),
            "sequences": len(train_data),
            "parameters": model.num_parameters(),
            "preset": job.preset,
            "name": model_config.name,
        }
        (Path(job.output_dir) / FINAL).write_text(json.dumps(final, indent=2) + "\n")
    return final


def load_task(name: str, glue_dir: str | None, cache_dir: str | None) -> TaskData:
    """A local task by name (built from the embedded data on first use) or a GLUE task from ``glue_dir``;
    ``ValueError`` listing the known tasks for any other name."""
    name = task_name(name)
    cache = Path(cache_dir) if cache_dir else cache_root()
    if name in LOCAL_TASKS:
        try:
            return load_local_task(name, cache)
        except FileNotFoundError:
            return prepare_default_data(cache).tasks[name]
    if glue_dir is None:
        raise ValueError(f"task {name!r} is a GLUE task: give the folder holding GLUE's tasks with --glue-dir")
    return load_glue_task(name, glue_dir)


RESULTS = "results"  # results.json and results.md in a finetuning output folder
PREDICTIONS = "predictions.tsv"


def check_output_folder(
    output_dir: str | Path, model_dir: str | Path, overwrite: bool, flag: str = "--output-dir"
) -> None:
    """``RunFolderError`` unless ``output_dir`` may receive a new model folder: absent, empty (but for the lock of
    the run writing it), or (``overwrite``) replaced as a whole at the end; never the input model's own folder,
    one inside it, or one holding it (replacing that would delete the model being read). ``flag`` names the
    output in the messages."""
    output, model = Path(output_dir), Path(model_dir).resolve()
    resolved = output.resolve()
    if resolved == model:
        raise RunFolderError(f"{flag} {output} is the input model's folder; choose another folder")
    if resolved.is_relative_to(model):
        raise RunFolderError(f"{flag} {output} lies inside the input model's folder {model_dir}; choose another folder")
    if model.is_relative_to(resolved):
        raise RunFolderError(
            f"{flag} {output} holds the input model ({model_dir}), which replacing it would delete; choose another "
            "folder"
        )
    if output.exists() and not output.is_dir():
        raise RunFolderError(f"{flag} {output} is a file, not a folder")
    if output.is_dir() and any(path.name != LOCK for path in output.iterdir()) and not overwrite:
        raise RunFolderError(
            f"{flag} {output} is not empty: choose another folder or pass --overwrite to replace it (the old "
            "folder stays until the new one is complete)"
        )


def write_predictions(path: Path, model: Any, task: TaskData, tokenizer: Any, config: FinetuneConfig) -> None:
    """``index<TAB>prediction`` for every test example (label names, or scores for regression)."""
    examples = task.test or task.unlabelled_test
    collator = task_collator(tokenizer, model.config, config, task)
    outputs = predict(model, examples, collator, config.eval_batch_size)
    lines = ["index\tprediction"]
    for index, row in enumerate(outputs):
        answer = f"{row[0].item():.6g}" if task.is_regression else task.label_names[int(row.argmax())]
        lines.append(f"{index}\t{answer}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def finetune_job(
    model_dir: str,
    output_dir: str,
    config: FinetuneConfig,
    tasks: Sequence[str] = (),
    glue_dir: str | None = None,
    cache_dir: str | None = None,
    user_files: UserFiles | None = None,
    overwrite: bool = False,
) -> list[TaskResult]:
    """Finetune ``model_dir`` on the named tasks or on your own files, and leave in ``output_dir``: the scores
    (``results.json``/``.md``: every seed and the medians), the model of the seed with the best validation score
    (your files: ``output_dir`` itself is that model's folder; named tasks: ``output_dir/<task>/``) with its
    tokenizer and label names, and ``predictions.tsv`` for a test file.

    Whatever can fail for a reason other than training itself fails before the first task trains: the model's
    config and tokenizer, ``max_length`` against the model, every task's name and data (all tasks are read first),
    and the output folder (it is built beside ``output_dir`` and renamed into place when complete, so a failure
    or a kill leaves the old folder, or none). ``output_dir`` is locked while the job runs: a second job into it is
    refused (:class:`RunFolderError` naming this one's pid). The results record the ``max_length`` actually used."""
    check_output_folder(output_dir, model_dir, overwrite)
    with run_folder_lock(output_dir):
        return _finetune_job(model_dir, output_dir, config, tasks, glue_dir, cache_dir, user_files, overwrite)


def _finetune_job(
    model_dir: str,
    output_dir: str,
    config: FinetuneConfig,
    tasks: Sequence[str],
    glue_dir: str | None,
    cache_dir: str | None,
    user_files: UserFiles | None,
    overwrite: bool,
) -> list[TaskResult]:
    if bool(tasks) == (user_files is not None):
        raise ValueError("give either task names (--tasks) or your own files (--train-file ...), not both or none")
    model_config = AutoConfig.from_pretrained(model_dir)  # crammedBERT, FFF-BERT or BERT
    config = replace(config, max_length=config.max_length_for(model_config))
    tokenizer = load_tokenizer(model_dir)
    check_output_folder(output_dir, model_dir, overwrite)
    loaded = [user_files.load()] if user_files is not None else [load_task(name, glue_dir, cache_dir) for name in tasks]
    staging = staging_folder(output_dir)
    try:
        results = []
        for task in loaded:
            status(task.summary())
            result, model = finetune_task(model_dir, task, tokenizer, config, keep_model=True)
            results.append(result)
            folder = staging if user_files is not None else staging / task.name
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            if task.test or task.unlabelled_test:
                write_predictions(folder / PREDICTIONS, model, task, tokenizer, config)
        write_results(
            results,
            staging / RESULTS,
            extra={"model_dir": str(model_dir), "config": asdict(config), "labels": _label_record(loaded)},
        )
        publish_folder(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(results_table(results))
    status(f"wrote {output_dir}")
    return results


def _label_record(tasks: list[TaskData]) -> dict[str, Any]:
    return {
        task.name: {"regression": task.is_regression, "labels": list(task.label_names), "metrics": task.metric_names}
        for task in tasks
    }


def validation_tree_health(
    model_dir: str | Path, corpus: Corpus, seq_len: int, cache: Path, max_sequences: int = 256, batch_size: int = 32
) -> tuple[str, list[TreeHealth], int]:
    """The model's name, the tree health (``model.health``) of every FFF layer of the model in ``model_dir`` (an
    encoder or a causal decoder; empty: no trees), and the count of sequences routed: up to ``max_sequences`` of
    ``corpus``'s validation split."""
    tokenizer = load_tokenizer(model_dir)
    model_class = AutoModelForCausalLM if holds_causal_lm(model_dir) else model_class_for(model_dir)
    model = model_class.from_pretrained(str(model_dir))
    check_sequences(model.config, seq_len, max_sequences)
    validation = packed_dataset(corpus, tokenizer, "validation", seq_len, cache)
    count = min(max_sequences, len(validation))
    if count == 0:
        raise ValueError("the corpus has no validation sequences to route")
    batches = (
        (torch.stack([validation[index] for index in range(start, min(count, start + batch_size))]), None)
        for start in range(0, count, batch_size)
    )
    return model.config.name, model_tree_health(model, batches), count


def tree_health_report(
    model_dir: str, corpus: Corpus, seq_len: int, cache: Path, max_sequences: int = 256, batch_size: int = 32
) -> str:
    """A table of :func:`validation_tree_health`."""
    name, layers, count = validation_tree_health(model_dir, corpus, seq_len, cache, max_sequences, batch_size)
    if not layers:
        return f"{name} has no FFF layers"
    lines = [
        f"{name}: tree health over {layers[0].tokens} tokens of {count} validation sequences",
        "layer  leaves never visited  nodes never visited per level (root first)  leaf entropy/uniform  root left",
    ]
    for index, layer in enumerate(layers):
        levels = " ".join(f"{100 * value:.0f}%" for value in layer.unvisited_node_fraction_per_level)
        root = "n/a" if layer.root_left_share is None else f"{layer.root_left_share:.2f}"
        lines.append(
            f"{index:>5}  {100 * layer.unvisited_leaf_fraction:>19.1f}%  {levels:<42}  "
            f"{layer.leaf_entropy_ratio:>20.3f}  {root:>9}"
        )
    return "\n".join(lines)


def check_sequences(model_config: CrammedBertConfig, seq_len: int, max_sequences: int) -> None:
    """``ValueError`` unless ``seq_len`` fits the model and at least one sequence is asked for."""
    if max_sequences < 1:
        raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
    if not 1 <= seq_len <= model_config.max_position_embeddings:
        raise ValueError(
            f"seq_len must lie in [1, {model_config.max_position_embeddings}] (the model's max_position_embeddings), "
            f"got {seq_len}"
        )


def pretrained_validation(
    model_dir: str, corpus: Corpus, seq_len: int, cache: Path, max_sequences: int = 512
) -> dict[str, float]:
    """``evaluate``: :func:`causal_validation` for a causal decoder's folder, :func:`mlm_validation` for a masked
    LM's."""
    validation = causal_validation if holds_causal_lm(model_dir) else mlm_validation
    return validation(model_dir, corpus, seq_len, cache, max_sequences)


def causal_validation(
    model_dir: str, corpus: Corpus, seq_len: int, cache: Path, max_sequences: int = 512
) -> dict[str, float]:
    """Next-token loss, perplexity and accuracy of a saved causal decoder on a corpus's validation split."""
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    check_sequences(model.config, seq_len, max_sequences)
    validation = packed_dataset(corpus, tokenizer, "validation", seq_len, cache)
    return causal_lm_metrics(model, validation, 32, max_sequences=max_sequences)


def mlm_validation(model_dir: str, corpus: Corpus, seq_len: int, cache: Path, max_sequences: int = 512) -> dict:
    """Masked-LM loss and accuracy of a saved masked LM (crammedBERT, FFF-BERT or BERT) on a corpus's validation
    split (fixed masks)."""
    tokenizer = load_tokenizer(model_dir)
    model = load_masked_lm(model_dir)
    check_sequences(model.config, seq_len, max_sequences)
    validation = packed_dataset(corpus, tokenizer, "validation", seq_len, cache)
    return mlm_metrics(model, validation, MLMCollator(tokenizer).mask_rows, 32, max_sequences=max_sequences)
