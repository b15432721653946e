"""Command line: ``ultrafastbert <command>``. Thin: the flags of the training, demo and benchmark commands come
from their config dataclasses (``flags.py``), which live in modules free of torch and transformers
(``train/config.py``, ``bench/config.py``, ``study/config.py``, ``demo_config.py``); a command imports the modules
that do its work only in its handler, so ``--help`` answers at once.

Input is checked before work starts: a flag that makes no sense is an argparse error, and a mistake found later
(a bad file, a checkpoint that does not fit) ends the command with one line and a non-zero exit code;
``ultrafastbert --debug <command>`` shows the traceback instead. Models are read from local folders only: the
Hugging Face hub is off (``HF_HUB_OFFLINE=1``) unless the environment sets ``HF_HUB_OFFLINE`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .flags import DefaultsHelpFormatter, add_flags, flag_type, from_flags, positive_int

CONFIG_FILE = "config.json"


def _model_folder(text: str) -> str:
    """``--model``: a local folder holding a ``config.json`` (never a hub name: nothing is downloaded)."""
    folder = Path(text)
    if not folder.is_dir():
        raise ValueError(f"no folder {text} (models are read from local folders; nothing is downloaded)")
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(f"{text} holds no {CONFIG_FILE}: not a saved model folder")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {error}") from None
    examples = {"id2label": '{"0": "negative", "1": "positive"}', "label2id": '{"negative": 0, "positive": 1}'}
    for field, example in examples.items():  # transformers fails on anything but an object with a traceback
        if field in config and not isinstance(config[field], dict):
            raise ValueError(
                f"{folder / CONFIG_FILE}: {field} must be an object such as {example}, not a "
                f"{type(config[field]).__name__}"
            )
    return text


model_folder = flag_type(_model_folder)


def _add_bench(bench: argparse.ArgumentParser) -> None:
    from .bench.config import DecodeBenchConfig, LayerBenchConfig, ModelBenchConfig
    from .bench.timing import thread_count

    which = bench.add_subparsers(dest="bench", required=True)

    def benchmark(name: str, summary: str, config_class: type, run: Callable[[Any, str], object]) -> None:
        """A benchmark command whose flags are ``config_class``'s, plus ``--output``."""
        command = which.add_parser(name, help=summary, formatter_class=DefaultsHelpFormatter)
        add_flags(command, config_class)
        command.add_argument("--output", default=f"benchmarks/results/{name}", help="path prefix for .json and .png")

        def handler(args: argparse.Namespace) -> int:
            run(from_flags(config_class, args), args.output)
            return 0

        command.set_defaults(handler=handler)

    def run_layer(config: LayerBenchConfig, output: str) -> None:
        from .bench.layer import run_layer_benchmark

        run_layer_benchmark(config, output=output)

    def run_model(config: ModelBenchConfig, output: str) -> None:
        from .bench.model import run_model_benchmark

        run_model_benchmark(config, output=output)

    benchmark("layer", "FFF layer vs dense FF, all implementations side by side", LayerBenchConfig, run_layer)

    shapes = which.add_parser(
        "shapes",
        help="FFF trees vs depth at (nearly) equal total neurons: time per token, beside the equal-FLOPs dense layer",
        formatter_class=DefaultsHelpFormatter,
    )
    shapes.add_argument("--shapes", nargs="+", default=["1x11", "2x10", "4x9", "8x8", "16x7"], help="KxD")
    shapes.add_argument("--width", type=int, default=768)
    shapes.add_argument("--tokens", type=int, default=4096)
    shapes.add_argument("--threads", type=thread_count, help="torch threads, or 'all' (default: torch's own)")
    shapes.add_argument("--output", default="benchmarks/results/layer_shapes", help="path prefix for .json")

    def run_shapes(args: argparse.Namespace) -> int:
        from .bench.layer import run_shape_benchmark

        parsed = tuple(tuple(int(part) for part in shape.split("x")) for shape in args.shapes)
        run_shape_benchmark(parsed, args.width, args.tokens, args.threads, args.output)
        return 0

    shapes.set_defaults(handler=run_shapes)

    benchmark("model", "whole-model forward: crammedBERT vs UltraFastBERT paths vs BERT", ModelBenchConfig, run_model)

    decode = which.add_parser(
        "decode",
        help="token-by-token decoding with the KV cache (dense, FFF, narrow, no FF) and the GPT-3 feedforward layer",
        formatter_class=DefaultsHelpFormatter,
    )
    add_flags(decode, DecodeBenchConfig)
    decode.add_argument("--output", default="benchmarks/results/decode", help="folder for report.json and report.md")

    def run_decode(args: argparse.Namespace) -> int:
        from .bench.decode import run_decode_benchmark

        run_decode_benchmark(from_flags(DecodeBenchConfig, args), output=args.output)
        return 0

    decode.set_defaults(handler=run_decode)


def _add_convert(convert: argparse.ArgumentParser) -> None:
    convert.add_argument("source", type=model_folder, help="checkpoint folder (either format)")
    convert.add_argument("destination", help="folder to write")
    convert.add_argument("--to", choices=("clean", "original"), default="clean", help="format to write")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty destination when done")

    def run(args: argparse.Namespace) -> int:
        from .train.jobs import convert_folder
        from .train.run_folder import RunFolderError

        try:
            print(convert_folder(args.source, args.destination, to=args.to, overwrite=args.overwrite))
        except RunFolderError as error:
            raise SystemExit(f"ultrafastbert convert: error: {error}") from None
        return 0

    convert.set_defaults(handler=run)


def _add_fill_mask(fill: argparse.ArgumentParser) -> None:
    fill.add_argument(
        "--model", required=True, type=model_folder, help="masked-LM checkpoint folder (with its tokenizer)"
    )
    fill.add_argument("--top-k", type=positive_int, default=5, help="predictions per mask")
    fill.add_argument("text", help='text with one or more <mask>, e.g. "paris is the <mask> of france"')

    def run(args: argparse.Namespace) -> int:
        from .model import load_tokenizer
        from .model.inference import fill_mask, load_masked_lm

        tokenizer = load_tokenizer(args.model)
        model = load_masked_lm(args.model)
        predictions = fill_mask(model, tokenizer, args.text, top_k=args.top_k)
        for index, candidates in enumerate(predictions):
            for rank, candidate in enumerate(candidates, start=1):
                print(f"mask {index}\t{rank}\t{candidate.token}\t{candidate.probability:.4f}")
        return 0

    fill.set_defaults(handler=run)


def _stdin_lines() -> tuple[list[str], list[int]]:
    """The non-blank lines of stdin, and the numbers of the lines that are not UTF-8 text (left out)."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream (tests, embedding): decoded already
        return [line.rstrip("\n") for line in sys.stdin if line.strip()], []
    lines, undecodable = [], []
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            undecodable.append(number)
            continue
        if line.strip():
            lines.append(line)
    return lines, undecodable


def _add_classify(classify: argparse.ArgumentParser) -> None:
    classify.add_argument("--model", required=True, type=model_folder, help="sequence-classification checkpoint folder")
    classify.add_argument("--batch-size", type=positive_int, default=32, help="lines per forward pass")

    def run(args: argparse.Namespace) -> int:
        from .model import load_tokenizer
        from .model.inference import classify as classify_texts
        from .model.inference import load_classifier

        tokenizer = load_tokenizer(args.model)
        model = load_classifier(args.model)
        lines, undecodable = _stdin_lines()
        for number in undecodable:
            print(f"ultrafastbert classify: line {number} of stdin is not UTF-8 text; skipped", file=sys.stderr)
        for prediction in classify_texts(model, tokenizer, lines, batch_size=args.batch_size):
            label = "" if prediction.label is None else f"{prediction.label}\t"
            print(f"{label}{prediction.score:.4f}")
        return 1 if undecodable else 0

    classify.set_defaults(handler=run)


def _add_pretrain(pretrain: argparse.ArgumentParser) -> None:
    from .train.config import PretrainConfig, PretrainJob

    add_flags(pretrain, PretrainJob)
    add_flags(pretrain.add_argument_group("training"), PretrainConfig)

    def run(args: argparse.Namespace) -> int:
        import signal

        from .model.loading import CheckpointError
        from .train.jobs import model_config_for_preset, pretrain_job
        from .train.pretrain import TrainingDivergedError
        from .train.run_folder import RunFolderError

        if args.max_steps is None and args.max_minutes is None:
            raise SystemExit("ultrafastbert pretrain: give a budget with --max-steps and/or --max-minutes")
        # refused before any work
        model_config_for_preset(
            args.preset, max_position_embeddings=args.seq_len, fff_balance_rate=args.fff_balance_rate
        )
        try:
            final = pretrain_job(from_flags(PretrainJob, args, train=from_flags(PretrainConfig, args)))
        except (RunFolderError, CheckpointError, TrainingDivergedError) as error:
            raise SystemExit(f"ultrafastbert pretrain: error: {error}") from None
        if final["interrupted"]:  # checkpointed, not finished: the exit status says so, as a killed command's does
            signum = final.get("signal")
            print(
                f"ultrafastbert pretrain: stopped by {signal.Signals(signum).name if signum else 'request'} at step "
                f"{final['step']}, checkpoint saved: rerun the same command with --resume to continue",
                file=sys.stderr,
            )
            return 128 + signum if signum else 1
        if "val_perplexity" in final:  # a causal decoder
            print(
                f"validation next-token loss {final['val_loss']:.3f}, perplexity {final['val_perplexity']:.2f}, "
                f"accuracy {final['val_accuracy']:.3f}"
            )
        elif "val_loss" in final:
            print(
                f"validation MLM loss {final['val_loss']:.3f}, accuracy {final['val_accuracy']:.3f} "
                f"({final['val_accuracy_replaced']:.3f} on replaced tokens)"
            )
        return 0

    pretrain.set_defaults(handler=run)


def _add_generate(generate: argparse.ArgumentParser) -> None:
    from .train.config import GenerateConfig

    generate.add_argument(
        "--model", required=True, type=model_folder, help="causal decoder folder with its tokenizer (pretrain's model/)"
    )
    generate.add_argument("prompt", help="the text to continue")
    add_flags(generate, GenerateConfig)

    def run(args: argparse.Namespace) -> int:
        from .progress import status
        from .train.generation import generate_text

        result = generate_text(args.model, args.prompt, from_flags(GenerateConfig, args))
        rate = result.new_tokens / max(result.seconds, 1e-9)
        status(f"{result.new_tokens} new tokens in {result.seconds:.2f} s ({rate:.1f} tokens/s)")
        return 0

    generate.set_defaults(handler=run)


def _add_finetune(finetune: argparse.ArgumentParser) -> None:
    from .data.task_names import task_name
    from .train.config import FinetuneConfig

    finetune.add_argument("--model", required=True, type=model_folder, help="pretrained model folder (with tokenizer)")
    finetune.add_argument(
        "--output-dir",
        required=True,
        help="folder to leave: results.json/.md, the best seed's model (your files: the folder itself; --tasks: one "
        "sub-folder per task) and predictions.tsv for a test file",
    )
    finetune.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir when done")
    named = finetune.add_argument_group("named tasks")
    named.add_argument(
        "--tasks", nargs="+", default=[], type=flag_type(task_name), help="local or GLUE task names (listed above)"
    )
    named.add_argument("--glue-dir", help="folder holding GLUE task folders (CoLA/, SST-2/, ...)")
    named.add_argument("--cache-dir", help="data cache (default: $ULTRAFASTBERT_CACHE or ~/.cache/ultrafastbert)")
    own = finetune.add_argument_group("your own data (CSV, TSV or JSON Lines, by extension)")
    own.add_argument("--train-file", help="training records; their labels make the label set")
    own.add_argument("--validation-file", help="records scored after every epoch (the best epoch is kept)")
    own.add_argument("--test-file", help="records to predict (scored too when they carry labels)")
    own.add_argument("--text-column", default="text", help="column with the text")
    own.add_argument("--text-pair-column", help="column with the second text of a pair")
    own.add_argument("--label-column", default="label", help="column with the label (a class, or a number)")
    own.add_argument(
        "--task-type",
        choices=("auto", "classification", "regression"),
        default="auto",
        help="auto: regression when the labels are numbers and not all integers",
    )
    own.add_argument("--task-name", help="name in the results (default: the training file's name)")
    add_flags(finetune.add_argument_group("finetuning"), FinetuneConfig)

    def run(args: argparse.Namespace) -> int:
        from .data.userdata import UserColumns, UserFiles
        from .train.jobs import finetune_job
        from .train.run_folder import RunFolderError

        user_files = None
        if args.train_file or args.validation_file or args.test_file:
            if args.tasks:
                finetune.error("give either --tasks or your own files (--train-file ...), not both")
            if not (args.train_file and args.validation_file):
                finetune.error("your own data needs both --train-file and --validation-file")
            columns = UserColumns(args.text_column, args.label_column, args.text_pair_column)
            user_files = UserFiles(
                args.train_file, args.validation_file, columns, args.test_file, args.task_type, args.task_name
            )
        elif not args.tasks:
            finetune.error("give --tasks NAME ... or your own files with --train-file and --validation-file")
        try:
            finetune_job(
                args.model,
                args.output_dir,
                from_flags(FinetuneConfig, args),
                tasks=args.tasks,
                glue_dir=args.glue_dir,
                cache_dir=args.cache_dir,
                user_files=user_files,
                overwrite=args.overwrite,
            )
        except RunFolderError as error:
            raise SystemExit(f"ultrafastbert finetune: error: {error}") from None
        return 0

    finetune.set_defaults(handler=run)


def _add_fffify(fffify: argparse.ArgumentParser) -> None:
    from .fffify.config import FffifyConfig

    fffify.add_argument("--model", required=True, type=model_folder, help="a trained BERT folder (with tokenizer)")
    fffify.add_argument("--output", required=True, help="folder for the converted model (built aside, then renamed)")
    fffify.add_argument("--overwrite", action="store_true", help="replace a non-empty --output when done")
    fffify.add_argument("--cache-dir", help="data cache (default: $ULTRAFASTBERT_CACHE or ~/.cache/ultrafastbert)")
    add_flags(fffify.add_argument_group("conversion"), FffifyConfig)

    def run(args: argparse.Namespace) -> int:
        from .fffify.job import fffify_job, report_lines
        from .train.run_folder import RunFolderError

        try:
            config = from_flags(FffifyConfig, args)
            record = fffify_job(args.model, args.output, config, overwrite=args.overwrite, cache_dir=args.cache_dir)
        except RunFolderError as error:
            raise SystemExit(f"ultrafastbert fffify: error: {error}") from None
        print("\n".join(report_lines(record, args.output)))
        return 0

    fffify.set_defaults(handler=run)


def _add_validation_text_flags(parser: argparse.ArgumentParser, model_help: str, max_sequences: int) -> None:
    """The flags of the commands that run a saved model on a corpus's validation split."""
    parser.add_argument("--model", required=True, type=model_folder, help=model_help)
    parser.add_argument(
        "--corpus",
        nargs="*",
        default=[],
        help="text files (default: the model's pretraining text as its folder records it, else the embedded corpus)",
    )
    parser.add_argument(
        "--seq-len", type=positive_int, help="tokens per sequence (default: the model's pretraining length, else 128)"
    )
    parser.add_argument("--max-sequences", type=positive_int, default=max_sequences, help="validation sequences used")
    parser.add_argument("--cache-dir", help="data cache (default: $ULTRAFASTBERT_CACHE or ~/.cache/ultrafastbert)")


def _validation_text(args: argparse.Namespace):
    """(corpus, sequence length, cache folder) of the flags ``_add_validation_text_flags`` added; prints which
    corpus it is."""
    from .cache import cache_root
    from .train.jobs import evaluation_corpus, recorded_seq_len

    cache = Path(args.cache_dir) if args.cache_dir else cache_root()
    corpus, description = evaluation_corpus(args.model, args.corpus, cache)
    print(description, flush=True)
    return corpus, args.seq_len or recorded_seq_len(args.model) or 128, cache


def _add_evaluate(evaluate: argparse.ArgumentParser) -> None:
    _add_validation_text_flags(evaluate, "pretrained model folder (with tokenizer)", max_sequences=512)

    def run(args: argparse.Namespace) -> int:
        from .train.jobs import pretrained_validation

        corpus, seq_len, cache = _validation_text(args)
        metrics = pretrained_validation(args.model, corpus, seq_len, cache, args.max_sequences)
        if "val_perplexity" in metrics:  # a causal decoder
            print(
                f"validation next-token loss {metrics['val_loss']:.4f}, perplexity {metrics['val_perplexity']:.2f}, "
                f"accuracy {metrics['val_accuracy']:.4f} over {metrics['val_predicted_tokens']} predicted tokens"
            )
            return 0
        print(
            f"validation MLM loss {metrics['val_loss']:.4f}, accuracy {metrics['val_accuracy']:.4f} "
            f"({metrics['val_accuracy_replaced']:.4f} on replaced tokens) over {metrics['val_masked_tokens']} "
            "masked tokens"
        )
        return 0

    evaluate.set_defaults(handler=run)


def _add_demo(demo: argparse.ArgumentParser) -> None:
    from .demo_config import DemoConfig

    add_flags(demo, DemoConfig)

    def run(args: argparse.Namespace) -> int:
        from .demo import run_demo

        run_demo(from_flags(DemoConfig, args), command=" ".join(["ultrafastbert", *sys.argv[1:]]))
        return 0

    demo.set_defaults(handler=run)


def _add_study(study: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from .study.config import STUDY_PRESETS, StudyConfig, StudyError, study_config

    study.add_argument(
        "--preset",
        choices=tuple(STUDY_PRESETS),
        default="cpu-2core",
        help="settings to start from; the flags below that differ from their defaults replace the preset's",
    )
    add_flags(study, StudyConfig)

    def run(args: argparse.Namespace) -> int:
        from .study.run import run_study
        from .train.run_folder import RunFolderError

        try:
            flagged, defaults = from_flags(StudyConfig, args), StudyConfig()
            changed = {
                f.name: getattr(flagged, f.name)
                for f in fields(StudyConfig)
                if getattr(flagged, f.name) != getattr(defaults, f.name)
            }
            config = study_config(args.preset, **changed)
            run_study(config, command=" ".join(["ultrafastbert", *sys.argv[1:]]))
        except (StudyError, RunFolderError, ValueError) as error:
            raise SystemExit(f"ultrafastbert study: error: {error}") from None
        return 0

    study.set_defaults(handler=run)


def _add_capacity(capacity: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from .capacity.config import CAPACITY_PRESETS, CapacityConfig, capacity_config

    capacity.add_argument(
        "--preset",
        choices=tuple(CAPACITY_PRESETS),
        default="record",
        help="settings to start from (record: the defaults shown); the flags given replace the preset's values",
    )
    capacity.add_argument("--cache-dir", help="data cache (default: $ULTRAFASTBERT_CACHE or ~/.cache/ultrafastbert)")
    add_flags(capacity, CapacityConfig)
    # A flag left out keeps the preset's value, even where the record default equals it: the namespace holds only
    # the flags given (the record default stays in the help).
    names = {f.name for f in fields(CapacityConfig)}
    for action in capacity._actions:
        if action.dest in names:
            shown = " ".join(map(str, action.default)) if isinstance(action.default, tuple) else action.default
            action.help = f"{action.help} (record: {shown})"
            action.default = argparse.SUPPRESS

    def run(args: argparse.Namespace) -> int:
        from .train.run_folder import RunFolderError

        given = {name: getattr(args, name) for name in names if hasattr(args, name)}
        try:
            config = capacity_config(
                args.preset, **{name: tuple(v) if isinstance(v, list) else v for name, v in given.items()}
            )
            from .capacity.run import run_capacity

            report = run_capacity(config, command=" ".join(["ultrafastbert", *sys.argv[1:]]), cache_dir=args.cache_dir)
        except (RunFolderError, ValueError, FileNotFoundError) as error:
            raise SystemExit(f"ultrafastbert capacity: error: {error}") from None
        print(f"capacity report: {Path(config.output_dir) / 'report.md'} ({len(report['results'])} arm results)")
        return 0

    capacity.set_defaults(handler=run)


def _add_inspect(inspect: argparse.ArgumentParser) -> None:
    _add_validation_text_flags(inspect, "model folder (any crammedBERT head, with its tokenizer)", max_sequences=256)

    def run(args: argparse.Namespace) -> int:
        from .train.jobs import tree_health_report

        corpus, seq_len, cache = _validation_text(args)
        print(tree_health_report(args.model, corpus, seq_len, cache, args.max_sequences))
        return 0

    inspect.set_defaults(handler=run)


# name -> (one-line help, description, the function adding the command's flags and handler)
COMMANDS: dict[str, tuple[str, str | None, Callable[[argparse.ArgumentParser], None]]] = {
    "bench": ("benchmarks (layer, shapes, model, decode)", None, _add_bench),
    "convert": (
        "rewrite a checkpoint folder between the original (published) and the clean format",
        None,
        _add_convert,
    ),
    "fill-mask": ("top-k predictions for every <mask> in a text", None, _add_fill_mask),
    "classify": (
        "classify lines from stdin (a tab separates a sentence pair); prints label and score",
        None,
        _add_classify,
    ),
    "pretrain": (
        "pretraining with the crammed recipe: MLM for encoders, next-token for decoders (also under torchrun)",
        "Pretrain on your text/JSONL files (--corpus) or the embedded default corpus: an encoder preset as a masked "
        "LM, a decoder preset (tiny-gpt..., gpt2-small...) on next-token prediction. Stops at --max-steps or "
        "--max-minutes, whichever comes first; SIGINT/SIGTERM checkpoint and stop. A folder that already holds a "
        "run needs --resume (continue it) or --overwrite (delete it); a finished run continues with --resume and a "
        "larger --max-steps (a new schedule segment).",
        _add_pretrain,
    ),
    "finetune": (
        "finetune a pretrained model on your CSV/TSV/JSONL files or on GLUE/local tasks; saves the best model",
        "Your files (--train-file, --validation-file, optional --test-file; named columns), or named tasks: the "
        "local ones (wn-pos, wn-supersense, wn-sense-match, fortune-topic) or GLUE's (cola, sst2, mrpc, stsb, qqp, "
        "mnli, qnli, rte) from --glue-dir in GLUE's TSV layout. Leaves results.json/.md, the best seed's model and "
        "predictions.tsv in --output-dir. The model, every file and the output folder are checked before the "
        "first task trains.",
        _add_finetune,
    ),
    "fffify": (
        "convert a trained BERT's feedforward layers into FFFs (distilled on real text); saves a model folder",
        "Loads a transformers BERT folder (BertModel, BertForMaskedLM or BertForSequenceClassification), replaces "
        "every layer's feedforward by an FFF of --trees trees of depth --depth, initialises it from the layer's "
        "real inputs and outputs on the text (the embedded corpus, or --corpus files), distils it layer by layer "
        "(and end to end with --e2e-steps), and saves an FFF-BERT folder that keeps every other weight and the "
        "tokenizer. --method grouped keeps the layer's own neurons instead: grouped into 2^depth leaves beside a "
        "shared leaf, --active-fraction of them per token, only the routing nodes fitted. fffify.json in the folder "
        "records held-out R^2 per layer and sentence-embedding fidelity.",
        _add_fffify,
    ),
    "evaluate": (
        "validation loss/accuracy of a pretrained model (MLM; next-token loss and perplexity for a decoder)",
        None,
        _add_evaluate,
    ),
    "generate": (
        "continue a prompt with a pretrained causal decoder, printing tokens as they come",
        "Greedy by default; --do-sample samples (--temperature, --top-k, --top-p, --seed). The prompt starts a "
        "document, as documents started in pretraining; generation stops at the end of text or --max-new-tokens. "
        "The folder, the prompt and its length against the model's context are checked before the weights load.",
        _add_generate,
    ),
    "study": (
        "quality study: dense vs FFF vs narrow dense vs no FF vs tree shapes, same budget; resumable",
        "Pretrains every variant with the same recipe, data and budget, finetunes each on the local tasks (and GLUE "
        "tasks with --glue-dir) over several seeds, times their FF layers and writes report.md/json and plots. "
        "Rerunning the same command continues where it stopped.",
        _add_study,
    ),
    "capacity": (
        "capacity benchmark: facts stored per feedforward FLOP (no FF, narrow, FFF, balanced FFF, wide); resumable",
        "Teaches every feedforward arm the same random facts (and WordNet lemma -> lexicographer file) for the same "
        "steps in a one-layer crammedBERT, measures exact-match recall, bits stored, cost per step and tree "
        "health, and writes report.md/json and plots. Rerunning the same command continues where it stopped.",
        _add_capacity,
    ),
    "inspect": (
        "tree health of a model's FFF layers on real text: dead leaves, usage entropy, root balance",
        None,
        _add_inspect,
    ),
    "demo": (
        "the main job: dense vs FFF model pretrained, finetuned and timed on the embedded real data",
        "The quality study's demo preset (`ultrafastbert study --preset demo`): pretrains a small crammedBERT and a "
        "small UltraFastBERT with the same recipe and time, finetunes both on the local tasks (several seeds), times "
        "their feedforward layers, writes the study's report and prints a summary. Rerunning the same command "
        "continues where it stopped.",
        _add_demo,
    ),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, with the flags of ``commands`` only (all when ``None``): adding a command's
    flags imports the (light) modules that define its config dataclasses."""
    parser = argparse.ArgumentParser(
        prog="ultrafastbert",
        description="UltraFastBERT: fast feedforward (FFF) layers and the crammedBERT models built from them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, description, add) in COMMANDS.items():
        command = subparsers.add_parser(
            name, help=summary, description=description, formatter_class=DefaultsHelpFormatter
        )
        if commands is None or name in commands:
            add(command)
            if name not in UNQUIET_COMMANDS:
                _add_output_flags(command, threads=name in THREADED_COMMANDS)
    return parser


# the benchmarks print only their tables (nothing for --quiet to hush) and have their own --threads
UNQUIET_COMMANDS = ("bench",)
# the commands that take --threads here
THREADED_COMMANDS = (
    "pretrain",
    "finetune",
    "classify",
    "fffify",
    "fill-mask",
    "generate",
    "evaluate",
    "inspect",
    "demo",
    "study",
)


def _add_output_flags(parser: argparse.ArgumentParser, threads: bool) -> None:
    """``--quiet`` on every command; ``--threads`` on those that run a model."""
    parser.add_argument(
        "--quiet", action="store_true", help="no progress or status lines on stderr: results and warnings only"
    )
    if threads:
        from .bench.timing import thread_count

        parser.add_argument(
            "--threads", type=flag_type(thread_count), help="torch threads, or 'all' (default: torch's own)"
        )


def _apply_output_flags(args: argparse.Namespace) -> None:
    """What ``_add_output_flags`` asked for: quiet or not (this package's log lines go to stderr either way), and
    torch's thread count."""
    from .progress import set_quiet, show_package_logs

    set_quiet(getattr(args, "quiet", False))
    show_package_logs()
    # the benchmarks set (and restore) their own --threads for the run only
    if args.command not in UNQUIET_COMMANDS and isinstance(getattr(args, "threads", None), int):
        import torch

        torch.set_num_threads(args.threads)


def _work_offline() -> None:
    """Nothing is downloaded at run time: the Hugging Face hub is off for this process and those it starts, unless
    the environment says otherwise. ``huggingface_hub`` reads the variable when imported; where something imported
    it already, its flag is set too."""
    if "HF_HUB_OFFLINE" in os.environ:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def _hush_libraries() -> None:
    """transformers' own reports stay out of this program's output unless the environment asks for them: its
    progress bars (loading and writing weights) and its warnings, such as the load-report table of a model's
    missing keys. This package's loader raises on a checkpoint that does not fit, naming the keys, instead."""
    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)
    if "transformers" in sys.modules:  # imported already: it read the environment before
        from transformers.utils import logging as transformers_logging

        if os.environ["TRANSFORMERS_VERBOSITY"] == "error":
            transformers_logging.set_verbosity_error()
        if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
            transformers_logging.disable_progress_bar()


def _is_user_error(error: BaseException) -> bool:
    """Errors that report bad input (flags, files, checkpoints, configs) rather than a bug in this program."""
    from huggingface_hub.errors import StrictDataclassError

    return isinstance(error, (ValueError, OSError, StrictDataclassError))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _work_offline()
    _hush_libraries()
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(commands=[command] if command else []).parse_args(argv)
    _apply_output_flags(args)
    try:
        return args.handler(args)
    except Exception as error:
        if args.debug or not _is_user_error(error):
            raise
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise SystemExit(f"ultrafastbert {args.command}: error: {message}") from None


if __name__ == "__main__":
    raise SystemExit(main())
