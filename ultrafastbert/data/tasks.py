"""Finetuning tasks: GLUE from its distributed TSV files and the local real tasks of ``docs/data.md``.

Every task becomes one :class:`TaskData` (examples, label names, the names of its metrics in ``metrics.py``), so
finetuning and evaluation code never sees a file format. GLUE's test labels are not public, so GLUE tasks are
evaluated on their dev files; the local tasks have seeded train / validation / test splits that are written to the
cache once and reused.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .corpus import hash_unit, normalize_text
from .debian import LEXNAMES, Synset, read_fortunes, read_wordnet
from .task_names import GLUE_NAMES, LOCAL_TASKS, TASK_NAMES, glue_key, task_name  # noqa: F401  (re-exported)

TASK_SPLITS = ("train", "validation", "test")
LOCAL_TASK_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Example:
    """One input (a text or a text pair) and its label: a class index, or a float for regression."""

    text_a: str
    text_b: str | None
    label: int | float


@dataclass
class TaskData:
    """A task ready for finetuning: its splits, labels and the metrics it is scored with (main metric first)."""

    name: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]  # empty for GLUE: its test labels are not public
    num_labels: int  # 1 for regression
    is_regression: bool
    metric_names: tuple[str, ...]
    label_names: tuple[str, ...]  # empty for regression
    extra_validation: dict[str, list[Example]] = field(default_factory=dict)  # MNLI: validation_mismatched
    unlabelled_test: list[Example] = field(default_factory=list)  # your test file without labels: predicted only

    @property
    def is_pair(self) -> bool:
        return any(example.text_b is not None for example in self.train[:1] + self.validation[:1])

    def evaluation_splits(self) -> dict[str, list[Example]]:
        """Every labelled split to evaluate on: validation, the extra ones (MNLI mismatched), test if labelled."""
        splits = {"validation": self.validation, **self.extra_validation}
        if self.test:
            splits["test"] = self.test
        return splits

    def class_balance(self, split: str = "train") -> dict[str, int]:
        """Examples per label name in ``split`` (regression: one bucket per integer part of the score)."""
        splits = {"train": self.train, **self.evaluation_splits()}
        if split not in splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; it has {sorted(splits)}")
        examples = splits[split]
        if self.is_regression:
            counts = Counter(f"{int(example.label)}-{int(example.label) + 1}" for example in examples)
        else:
            counts = Counter(self.label_names[int(example.label)] for example in examples)
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """Sizes and class balance of every split, for logs and reports."""
        lines = [f"{self.name}: {self.num_labels} labels, metrics {', '.join(self.metric_names)}"]
        for split, examples in {"train": self.train, **self.evaluation_splits()}.items():
            balance = self.class_balance(split)
            total = max(len(examples), 1)
            shares = ", ".join(f"{label} {100 * count / total:.1f}%" for label, count in balance.items())
            lines.append(f"  {split}: {len(examples):,} examples ({shares})")
        return "\n".join(lines)


# ---------------------------------------------------------------- GLUE


@dataclass(frozen=True)
class GlueSpec:
    """How one GLUE task is laid out in its TSV files (GLUE's own distribution, as ``download_glue_data.py``)."""

    folder: str  # sub-folder of the GLUE root
    text_columns: tuple[str | int, ...]  # header names, or positions when the file has no header (CoLA)
    label_column: str | int
    label_values: tuple[str, ...]  # raw label strings, in label-index order; empty for regression
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    validation_files: tuple[tuple[str, str], ...] = (("validation", "dev.tsv"),)
    has_header: bool = True
    skip_malformed: bool = False  # QQP's train file has rows with missing fields: skipped, counted, warned


GLUE_TASKS = {
    "cola": GlueSpec("CoLA", (3,), 1, ("0", "1"), ("unacceptable", "acceptable"), ("mcc",), has_header=False),
    "sst2": GlueSpec("SST-2", ("sentence",), "label", ("0", "1"), ("negative", "positive"), ("accuracy",)),
    "mrpc": GlueSpec(
        "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("not_equivalent", "equivalent"),
        ("f1", "accuracy"),
    ),
    "stsb": GlueSpec("STS-B", ("sentence1", "sentence2"), "score", (), (), ("pearson", "spearman")),
    "qqp": GlueSpec(
        "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("not_duplicate", "duplicate"),
        ("f1", "accuracy"), skip_malformed=True,
    ),
    "mnli": GlueSpec(
        "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
        ("entailment", "neutral", "contradiction"), ("accuracy",),
        validation_files=(("validation", "dev_matched.tsv"), ("validation_mismatched", "dev_mismatched.tsv")),
    ),
    "qnli": GlueSpec(
        "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
        ("entailment", "not_entailment"), ("accuracy",),
    ),
    "rte": GlueSpec(
        "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
        ("entailment", "not_entailment"), ("accuracy",),
    ),
}  # fmt: skip


def _glue_name(name: str) -> str:
    key = glue_key(name)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; choose one of {sorted(GLUE_TASKS)}")
    return key


def glue_task_dir(name: str, data_dir: Path | str) -> Path:
    """The folder with the task's TSVs: ``data_dir`` itself, or ``data_dir/<GLUE folder>`` (e.g. ``glue/CoLA``)."""
    spec = GLUE_TASKS[_glue_name(name)]
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / spec.folder):
        if (candidate / "train.tsv").is_file():
            return candidate
    raise FileNotFoundError(
        f"GLUE task {name!r}: no train.tsv in {data_dir} or {data_dir / spec.folder}; expected GLUE's layout "
        f"({spec.folder}/train.tsv and {', '.join(file for _, file in spec.validation_files)})"
    )


def read_glue_tsv(path: Path | str, spec: GlueSpec) -> list[Example]:
    """One GLUE TSV file -> examples. Fields are tab-separated with no quoting (quotes are literal text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file {path} not found")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # MRPC's files start with a byte-order mark
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not UTF-8 (GLUE's files are); convert the file to UTF-8") from None
    if spec.has_header:
        if not lines:
            raise ValueError(f"{path} is empty; expected a header line")
        header = lines[0].split("\t")
        missing = [name for name in (*spec.text_columns, spec.label_column) if name not in header]
        if missing:
            raise ValueError(f"{path}: header {header} lacks the columns {missing}")
        positions = [header.index(name) for name in (*spec.text_columns, spec.label_column)]
        width, first_line = len(header), 2
    else:
        positions = [int(column) for column in (*spec.text_columns, spec.label_column)]
        width, first_line = max(positions) + 1, 1
    examples, malformed = [], 0
    for line_number, line in enumerate(lines[first_line - 1 :], first_line):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < width or (spec.has_header and len(fields) != width):
            if spec.skip_malformed:
                malformed += 1
                continue
            raise ValueError(f"{path}:{line_number}: expected {width} tab-separated fields, got {len(fields)}")
        *texts, raw_label = (fields[position] for position in positions)
        examples.append(
            Example(texts[0], texts[1] if len(texts) > 1 else None, _glue_label(raw_label, spec, path, line_number))
        )
    if malformed:
        warnings.warn(f"{path}: skipped {malformed} malformed rows (known for GLUE's QQP)", stacklevel=2)
    if not examples:
        raise ValueError(f"{path} has no examples")
    return examples


def _glue_label(raw: str, spec: GlueSpec, path: Path, line_number: int) -> int | float:
    raw = raw.strip()
    if not spec.label_values:
        try:
            score = float(raw)
        except ValueError:
            raise ValueError(f"{path}:{line_number}: score {raw!r} is not a number") from None
        if not math.isfinite(score):
            raise ValueError(f"{path}:{line_number}: score {raw!r} is not a finite number")
        return score
    if raw not in spec.label_values:
        raise ValueError(f"{path}:{line_number}: label {raw!r} is not one of {spec.label_values}")
    return spec.label_values.index(raw)


def load_glue_task(name: str, data_dir: Path | str) -> TaskData:
    """A GLUE task from GLUE's distributed TSVs (``train.tsv`` and the dev file(s)); the test file is not read."""
    key = _glue_name(name)
    spec = GLUE_TASKS[key]
    folder = glue_task_dir(key, data_dir)
    validation = {split: read_glue_tsv(folder / file, spec) for split, file in spec.validation_files}
    return TaskData(
        name=key,
        train=read_glue_tsv(folder / "train.tsv", spec),
        validation=validation.pop("validation"),
        test=[],
        num_labels=len(spec.label_names) or 1,
        is_regression=not spec.label_names,
        metric_names=spec.metric_names,
        label_names=spec.label_names,
        extra_validation=validation,
    )


# ---------------------------------------------------------------- local tasks built from the default packages

# the topical fortune files (16 classes, ~5.6k fortunes); the others (cookie, people, wisdom, ...) are grab-bags
FORTUNE_TOPICS = (
    "art", "computers", "drugs", "education", "food", "law", "love", "medicine", "men-women", "news", "pets",
    "politics", "science", "sports", "startrek", "work",
)  # fmt: skip
WORDNET_POS_LABELS = ("noun", "verb", "adj", "adv")
NOUN_LEXNAMES = tuple(name for name in LEXNAMES if name.startswith("noun."))
_LOCAL_METRICS = {
    "wn-pos": ("accuracy", "macro_f1"),
    "wn-supersense": ("accuracy", "macro_f1"),
    "wn-supersense-noun": ("accuracy", "macro_f1"),
    "wn-sense-match": ("accuracy", "f1"),
    "fortune-topic": ("accuracy", "macro_f1"),
}


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of the seeded local-task splits; the key of an example is its normalised input text."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def split_of(self, key: str) -> str:
        position = hash_unit(normalize_text(key), self.seed)
        if position < self.validation_fraction:
            return "validation"
        return "test" if position < self.validation_fraction + self.test_fraction else "train"


def _single_label_examples(pairs: Iterable[tuple[str, int]]) -> list[Example]:
    """Examples from (text, label), one per normalised text; texts seen with two labels are dropped (ambiguous)."""
    labels: dict[str, set[int]] = defaultdict(set)
    first_text: dict[str, str] = {}
    for text, label in pairs:
        key = normalize_text(text)
        labels[key].add(label)
        first_text.setdefault(key, text)
    return [Example(first_text[key], None, next(iter(found))) for key, found in labels.items() if len(found) == 1]


def _wordnet_tasks(synsets: list[Synset], seed: int) -> dict[str, tuple[list[Example], tuple[str, ...]]]:
    """wn-pos, wn-supersense(-noun) and wn-sense-match examples (unsplit) with their label names."""
    return {
        "wn-pos": (
            _single_label_examples((s.definition, WORDNET_POS_LABELS.index(s.pos)) for s in synsets),
            WORDNET_POS_LABELS,
        ),
        "wn-supersense": (
            _single_label_examples((s.definition, LEXNAMES.index(s.lexname)) for s in synsets),
            LEXNAMES,
        ),
        "wn-supersense-noun": (
            _single_label_examples((s.definition, NOUN_LEXNAMES.index(s.lexname)) for s in synsets if s.pos == "noun"),
            NOUN_LEXNAMES,
        ),
        "wn-sense-match": (_sense_match_examples(synsets, seed), ("other_sense", "same_sense")),
    }


def _sense_match_examples(synsets: list[Synset], seed: int) -> list[Example]:
    """Each usable example sentence twice: with its own definition (label 1) and with the definition of another
    sense of a word it uses, same part of speech (label 0). Balanced 50/50 by construction.

    Usable: the sentence belongs to one synset only and contains (as a word prefix) one of the synset's words
    that has at least two senses with distinct definitions in its part of speech.
    """
    senses: dict[tuple[str, str], list[Synset]] = defaultdict(list)
    example_count: Counter[str] = Counter()
    definitions = {synset: normalize_text(synset.definition) for synset in synsets}
    for synset in synsets:
        for word in synset.words:
            senses[(word.lower(), synset.pos)].append(synset)
        example_count.update({normalize_text(example) for example in synset.examples})
    rng = np.random.default_rng(seed)
    examples = []
    for synset in synsets:
        for sentence in synset.examples:
            if example_count[normalize_text(sentence)] != 1:
                continue
            lowered = sentence.lower()
            for word in synset.words:
                others = [
                    other.definition
                    for other in senses[(word.lower(), synset.pos)]
                    if definitions[other] != definitions[synset]
                ]
                if others and re.search(rf"\b{re.escape(word.lower())}", lowered):
                    examples.append(Example(sentence, synset.definition, 1))
                    examples.append(Example(sentence, others[rng.integers(len(others))], 0))
                    break
    return examples


def _fortune_topic_examples(fortunes: dict[str, list[str]]) -> list[Example]:
    missing = [topic for topic in FORTUNE_TOPICS if topic not in fortunes]
    if missing:
        raise FileNotFoundError(f"fortune files {missing} not found (is the `fortunes` package complete?)")
    return _single_label_examples(
        (text, FORTUNE_TOPICS.index(topic)) for topic in FORTUNE_TOPICS for text in fortunes[topic]
    )


def build_local_tasks(
    package_roots: dict[str, Path], cache_dir: Path | str, split: SplitConfig | None = None
) -> dict[str, TaskData]:
    """The local tasks from the unpacked ``wordnet-base`` and ``fortunes`` packages, split once and cached.

    A task whose split files already exist is read back, never rebuilt: its splits stay fixed for good.
    """
    split = split or SplitConfig()
    folder = _local_tasks_dir(cache_dir, split)
    if all((folder / name / "meta.json").is_file() for name in LOCAL_TASKS):
        return {name: load_local_task(name, cache_dir, split) for name in LOCAL_TASKS}
    synsets = read_wordnet(Path(package_roots["wordnet-base"]) / "usr/share/wordnet")
    built = _wordnet_tasks(synsets, split.seed)
    built["fortune-topic"] = (
        _fortune_topic_examples(read_fortunes(Path(package_roots["fortunes"]) / "usr/share/games/fortunes")),
        FORTUNE_TOPICS,
    )
    tasks = {}
    for name in LOCAL_TASKS:
        if not (folder / name / "meta.json").is_file():
            examples, label_names = built[name]
            _write_local_task(folder / name, name, examples, label_names, split)
        tasks[name] = load_local_task(name, cache_dir, split)
    return tasks


def _local_tasks_dir(cache_dir: Path | str, split: SplitConfig) -> Path:
    fractions = f"{split.validation_fraction:g}-{split.test_fraction:g}"
    return Path(cache_dir) / "tasks" / f"v{LOCAL_TASK_FORMAT_VERSION}-seed{split.seed}-{fractions}"


def _write_local_task(
    folder: Path, name: str, examples: list[Example], label_names: tuple[str, ...], split: SplitConfig
) -> None:
    """Write ``{train,validation,test}.jsonl`` (labels by name) and ``meta.json`` (written last: completion)."""
    folder.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[Example]] = {name: [] for name in TASK_SPLITS}
    for example in examples:
        by_split[split.split_of(example.text_a)].append(example)
    balance = {}
    for split_name, split_examples in by_split.items():
        with open(folder / f"{split_name}.jsonl", "w", encoding="utf-8") as handle:
            for example in split_examples:
                record = {"text_a": example.text_a, "text_b": example.text_b, "label": label_names[example.label]}
                handle.write(json.dumps(record) + "\n")
        balance[split_name] = dict(sorted(Counter(label_names[example.label] for example in split_examples).items()))
    meta = {
        "name": name,
        "format_version": LOCAL_TASK_FORMAT_VERSION,
        "label_names": list(label_names),
        "metric_names": list(_LOCAL_METRICS[name]),
        "split": asdict(split),
        "sizes": {split_name: len(split_examples) for split_name, split_examples in by_split.items()},
        "class_balance": balance,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_local_task(name: str, cache_dir: Path | str, split: SplitConfig | None = None) -> TaskData:
    """A local task from the split files written by :func:`build_local_tasks`."""
    if name not in LOCAL_TASKS:
        raise ValueError(f"unknown local task {name!r}; choose one of {LOCAL_TASKS}")
    folder = _local_tasks_dir(cache_dir, split or SplitConfig()) / name
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(
            f"local task {name!r} is not built in {folder}; run ultrafastbert.data.prepare_default_data() first"
        )
    meta = json.loads((folder / "meta.json").read_text())
    label_names = tuple(meta["label_names"])
    splits = {}
    for split_name in TASK_SPLITS:
        with open(folder / f"{split_name}.jsonl", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        splits[split_name] = [
            Example(record["text_a"], record["text_b"], label_names.index(record["label"])) for record in records
        ]
    return TaskData(
        name=name,
        num_labels=len(label_names),
        is_regression=False,
        metric_names=tuple(meta["metric_names"]),
        label_names=label_names,
        **splits,
    )


def evaluation_texts(tasks: Iterable[TaskData]) -> set[str]:
    """Every input text of the labelled evaluation splits: what must not appear in the pretraining corpus."""
    texts = set()
    for task in tasks:
        for examples in task.evaluation_splits().values():
            for example in examples:
                texts.add(example.text_a)
                if example.text_b is not None:
                    texts.add(example.text_b)
    return texts


# ---------------------------------------------------------------- batches


class TaskCollator:
    """Examples -> a padded batch (``input_ids``, ``attention_mask``, ``labels``) for sequence classification.

    Pairs use the tokenizer's pair template (``<cls> A <sep> B <sep>``); truncation keeps ``max_length`` tokens.
    Labels are ``long`` class ids, or ``float`` scores for regression. ``token_types`` adds ``token_type_ids``
    (segment ids) for models that have a segment embedding (BERT; crammedBERT has none).
    """

    def __init__(
        self, tokenizer, max_length: int = 128, is_regression: bool = False, token_types: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.is_regression = is_regression
        self.token_types = token_types

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        pairs = [example.text_b for example in examples]
        is_pair = pairs[0] is not None
        if any((text is not None) != is_pair for text in pairs):
            raise ValueError("a batch mixes single texts and text pairs")
        batch = self.tokenizer(
            [example.text_a for example in examples],
            pairs if is_pair else None,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_token_type_ids=self.token_types,
            return_tensors="pt",
        )
        dtype = torch.float32 if self.is_regression else torch.long
        return {**batch, "labels": torch.tensor([example.label for example in examples], dtype=dtype)}
