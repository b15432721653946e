"""Your own labelled files as a finetuning task, in the conventions of transformers' ``run_glue.py``.

``load_user_task`` reads a training file, a validation file and optionally a test file (CSV, TSV or JSON Lines,
by extension) into one :class:`~ultrafastbert.data.tasks.TaskData`, the type every task has here, so finetuning
and evaluation treat them like GLUE or the local tasks. The columns are named: one text column, optionally a second
one for text pairs, and a label column.

- **Classification** when the labels are strings or integers: the label set is read from the training file and
  sorted (numerically for integers, alphabetically otherwise); a validation or test label outside it is an error.
  Metrics: accuracy (main) and macro F1.
- **Regression** when the labels are numbers that are not all integers (or with ``task_type="regression"``):
  metrics Pearson (main), Spearman and mean squared error.

Every mistake is a ``UserDataError`` naming the file, the line and the column, raised while reading, before
anything trains. CSV is read with Python's ``csv`` module (quotes as written by spreadsheets); TSV has no quoting
(a quote is text, as in GLUE's files); JSON Lines holds one object per line (``.json`` files are read the same way,
as ``datasets`` does).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .tasks import Example, TaskData

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
TaskType = Literal["auto", "classification", "regression"]
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman", "mse")


class UserDataError(ValueError):
    """A user data file that cannot be used as given; the message names the file, line and column."""


@dataclass(frozen=True)
class Row:
    """One record of a user file: its line number (1 = the first line of the file) and its fields."""

    line: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class UserColumns:
    """Which columns hold the text, the optional second text of a pair, and the label."""

    text: str
    label: str
    text_pair: str | None = None


def file_format(path: Path) -> str:
    """``csv``, ``tsv`` or ``jsonl`` from the file's extension, or a ``UserDataError`` listing the known ones."""
    form = FORMATS.get(path.suffix.lower())
    if form is None:
        raise UserDataError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FORMATS)}")
    return form


def read_rows(path: str | Path) -> list[Row]:
    """The records of a CSV (header line first), TSV (header line first) or JSON Lines file."""
    path = Path(path)
    form = file_format(path)
    if not path.is_file():
        raise UserDataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserDataError(f"{path}: not UTF-8 text (byte {error.start})") from None
    if not text.strip():
        raise UserDataError(f"{path}: the file is empty")
    rows = _read_jsonl(path, text) if form == "jsonl" else _read_delimited(path, text, form)
    if not rows:
        raise UserDataError(f"{path}: the file has a header but no records")
    return rows


def _read_delimited(path: Path, text: str, form: str) -> list[Row]:
    lines = text.splitlines()
    reader = (
        csv.reader(lines)
        if form == "csv"
        else csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    )
    rows: list[Row] = []
    header: list[str] | None = None
    try:
        for values in reader:
            line = reader.line_num
            if header is None:
                header = [name.strip() for name in values]
                duplicates = sorted({name for name in header if header.count(name) > 1})
                if duplicates:
                    raise UserDataError(f"{path}:{line}: the header repeats the columns {duplicates}")
                continue
            if not any(value.strip() for value in values):
                continue  # a blank line
            if len(values) != len(header):
                raise UserDataError(f"{path}:{line}: {len(values)} fields where the header has {len(header)}")
            rows.append(Row(line, dict(zip(header, values, strict=True))))
    except csv.Error as error:
        raise UserDataError(f"{path}:{reader.line_num}: {error}") from None
    return rows


def _read_jsonl(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            hint = " (a .json file is read as JSON Lines: one object per line)" if number == 1 else ""
            raise UserDataError(f"{path}:{number}: not a JSON object: {error.msg}{hint}") from None
        if not isinstance(record, dict):
            raise UserDataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        rows.append(Row(number, record))
    return rows


def _check_columns(path: Path, rows: list[Row], columns: UserColumns, need_label: bool) -> None:
    """Every named column present in every record, with text where text is expected."""
    texts = [columns.text] + ([columns.text_pair] if columns.text_pair else [])
    names = texts + ([columns.label] if need_label else [])
    for row in rows:
        missing = [name for name in names if name not in row.fields]
        if missing:
            found = ", ".join(map(repr, row.fields)) or "none"
            which = "column" if len(missing) == 1 else "columns"
            raise UserDataError(f"{path}:{row.line}: missing {which} {', '.join(map(repr, missing))} (found: {found})")
        for name in texts:
            value = row.fields[name]
            if not isinstance(value, str):
                raise UserDataError(
                    f"{path}:{row.line}: column {name!r} holds {type(value).__name__} {value!r}, not text"
                )


def _raw_label(path: Path, row: Row, column: str) -> str | int | float:
    """The label of a record as written: a string (CSV/TSV, JSON strings) or a JSON number; never empty."""
    value = row.fields[column]
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise UserDataError(f"{path}:{row.line}: label column {column!r} holds {value!r}, not a label")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise UserDataError(f"{path}:{row.line}: label column {column!r} is empty")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserDataError(f"{path}:{row.line}: label {value!r} is not a finite number")
    return value


def _as_number(value: str | int | float) -> int | float | None:
    """``value`` as an int (``"3"``, ``3``, ``3.0`` in JSON stays float) or float (``"0.5"``), else ``None``."""
    if isinstance(value, (int, float)):
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _is_non_finite_number(value: str | int | float) -> bool:
    """Whether ``value`` is written as a number that is not finite (``nan``, ``inf``, ``-Infinity``)."""
    try:
        return not math.isfinite(float(value))
    except ValueError:
        return False


def infer_task_type(path: Path, rows: list[Row], column: str) -> Literal["classification", "regression"]:
    """Regression when every label is a number and some is not an integer (``0.5``, or ``1.0`` in JSON); else
    classification. Labels that mix numbers and words are refused: say which with ``task_type``."""
    numbers, words = [], []
    for row in rows:
        raw = _raw_label(path, row, column)
        (words if _as_number(raw) is None else numbers).append((row, raw))
    not_finite = [(row, raw) for row, raw in words if _is_non_finite_number(raw)]
    if numbers and not_finite:  # numeric labels with a nan among them: that record is the mistake, not the type
        row, raw = not_finite[0]
        raise UserDataError(
            f"{path}:{row.line}: label {raw!r} in column {column!r} is not a finite number (the other labels are "
            "numbers); fix or drop that record"
        )
    if numbers and words:
        (number_row, number), (word_row, word) = numbers[0], words[0]
        raise UserDataError(
            f"{path}: mixed label types in column {column!r}: a number ({number!r}, line {number_row.line}) and "
            f"text ({word!r}, line {word_row.line}); pass task_type classification (--task-type) to read every "
            "label as a class name"
        )
    if words:
        return "classification"
    if any(isinstance(_as_number(raw), float) for _, raw in numbers):
        return "regression"
    return "classification"


def _label_names(path: Path, rows: list[Row], column: str) -> tuple[str, ...]:
    """The sorted label set of the training rows: numeric order when every label is an integer."""
    raw = {row.line: _raw_label(path, row, column) for row in rows}
    types = {type(value) for value in raw.values()}
    if str in types and len(types) > 1:
        kinds = sorted(t.__name__ for t in types)
        raise UserDataError(f"{path}: mixed label types in column {column!r} ({', '.join(kinds)})")
    values = {str(value) for value in raw.values()}
    integers = {value: _as_number(value) for value in values}
    if all(isinstance(number, int) for number in integers.values()):
        return tuple(sorted(values, key=lambda value: integers[value]))
    return tuple(sorted(values))


def _examples(
    path: Path, rows: list[Row], columns: UserColumns, kind: str, label_names: tuple[str, ...], need_label: bool
) -> list[Example]:
    examples = []
    for row in rows:
        text_a = row.fields[columns.text]
        text_b = row.fields[columns.text_pair] if columns.text_pair else None
        if not text_a.strip():
            raise UserDataError(f"{path}:{row.line}: column {columns.text!r} is empty")
        label: int | float = -1  # an unlabelled test record
        if need_label:
            raw = _raw_label(path, row, columns.label)
            if kind == "regression":
                number = _as_number(raw)
                if number is None:
                    kind_of_value = "a finite number" if _is_non_finite_number(raw) else "a number"
                    raise UserDataError(
                        f"{path}:{row.line}: label {raw!r} in column {columns.label!r} is not {kind_of_value} (a "
                        "regression task needs numeric labels)"
                    )
                label = float(number)
            else:
                if str(raw) not in label_names:
                    raise UserDataError(
                        f"{path}:{row.line}: label {raw!r} does not occur in the training file (its labels: "
                        f"{', '.join(label_names)})"
                    )
                label = label_names.index(str(raw))
        examples.append(Example(text_a, text_b, label))
    return examples


SPLIT_WORD = re.compile(r"(?:^|[-_. ])(?:train|training|trn)(?=$|[-_. ])", re.IGNORECASE)


def default_task_name(train_file: str | Path) -> str:
    """A task's name from its training file: the file's name less its extension and a split word
    (``reviews_train.csv`` -> ``reviews``), or the folder's name when nothing else is left (``reviews/train.csv``
    -> ``reviews``)."""
    path = Path(train_file)
    name = SPLIT_WORD.sub("", path.stem).strip("-_. ")
    return name or path.resolve().parent.name or "task"


def load_user_task(
    train_file: str | Path,
    validation_file: str | Path,
    columns: UserColumns,
    test_file: str | Path | None = None,
    task_type: TaskType = "auto",
    name: str | None = None,
) -> TaskData:
    """A classification or regression task from your files; every check runs here, before any training.

    The test file's labels are optional: without the label column its records are predicted, not scored.
    ``name`` defaults to :func:`default_task_name` of the training file."""
    if task_type not in ("auto", "classification", "regression"):
        raise UserDataError(f"unknown task_type {task_type!r}; choose auto, classification or regression")
    if columns.text_pair is not None and columns.text_pair in (columns.text, columns.label):
        raise UserDataError(f"the text-pair column {columns.text_pair!r} is also the text or label column")
    if columns.text == columns.label:
        raise UserDataError(f"the text column and the label column are both {columns.text!r}")
    paths = {"train": Path(train_file), "validation": Path(validation_file)}
    if test_file is not None:
        paths["test"] = Path(test_file)
    rows = {split: read_rows(path) for split, path in paths.items()}
    test_labelled = "test" in rows and all(columns.label in row.fields for row in rows["test"])
    for split, split_rows in rows.items():
        _check_columns(paths[split], split_rows, columns, need_label=split != "test" or test_labelled)
    kind = task_type if task_type != "auto" else infer_task_type(paths["train"], rows["train"], columns.label)
    label_names = () if kind == "regression" else _label_names(paths["train"], rows["train"], columns.label)
    if kind == "classification" and len(label_names) < 2:
        raise UserDataError(
            f"{paths['train']}: column {columns.label!r} holds a single label {label_names[0]!r}; a classifier "
            "needs at least two"
        )
    splits = {
        split: _examples(
            paths[split], split_rows, columns, kind, label_names, need_label=split != "test" or test_labelled
        )
        for split, split_rows in rows.items()
    }
    return TaskData(
        name=name or default_task_name(paths["train"]),
        train=splits["train"],
        validation=splits["validation"],
        test=splits.get("test", []) if test_labelled else [],
        num_labels=1 if kind == "regression" else len(label_names),
        is_regression=kind == "regression",
        metric_names=REGRESSION_METRICS if kind == "regression" else CLASSIFICATION_METRICS,
        label_names=label_names,
        unlabelled_test=[] if test_labelled else splits.get("test", []),
    )


@dataclass(frozen=True)
class UserFiles:
    """Where a task of your own is read from (``load_user_task``'s arguments, as the CLI flags give them)."""

    train_file: str
    validation_file: str
    columns: UserColumns
    test_file: str | None = None
    task_type: TaskType = "auto"
    name: str | None = None

    def load(self) -> TaskData:
        return load_user_task(
            self.train_file, self.validation_file, self.columns, self.test_file, self.task_type, self.name
        )
