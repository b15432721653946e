"""Pretraining text: documents -> a cached, normalised corpus on disk.

:func:`normalize_text` applies the original recipe's normalisation (lowercase, accents stripped, ASCII only), the
same one the tokenizer's normalizer applies. Documents come from the user's files, folders, JSONL or datasets
(here) or from the embedded default's Debian packages (``debian.py``). A corpus on disk is one text file per
source, one document per line, plus ``manifest.json`` with sizes and hashes, so a second run only reads it back.
Evaluation texts are kept out of pretraining text by :class:`LeakageFilter`.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CORPUS_FORMAT_VERSION = 1
SPLITS = ("train", "validation")
# what counts as whitespace, spelled out so that Python (str.split also splits on \x1c-\x1f) and the Rust
# normaliser (Unicode White_Space) agree; only ASCII is left when it applies
ASCII_WHITESPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f ]+"


# ---------------------------------------------------------------- normalisation


def normalize_text(text: str) -> str:
    """Lowercase, strip accents, keep ASCII, collapse whitespace: the original's normaliser, in Python.

    Kept equal to the tokenizer's normalizer (``tokenizer.build_normalizer``) so cached text, leakage matching
    and tokenisation all see the same string.
    """
    text = text.replace("``", '"').replace("''", '"')
    # NFD splits "é" into "e" + a combining accent; dropping non-ASCII then strips the accent with the rest
    text = unicodedata.normalize("NFD", text).lower().encode("ascii", "ignore").decode("ascii")
    return re.sub(ASCII_WHITESPACE, " ", text).strip(" ")


def _words(text: str) -> tuple[str, ...]:
    """Normalised word tokens, punctuation dropped: the unit of leakage matching."""
    return tuple(re.findall(r"[a-z0-9]+", normalize_text(text)))


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); convert it first (e.g. with iconv)") from error


def split_paragraphs(text: str) -> list[list[str]]:
    """Blank-line separated paragraphs, each a list of its raw lines."""
    paragraphs: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [paragraph for paragraph in paragraphs if paragraph]



# ---------------------------------------------------------------- leakage


class LeakageFilter:
    """Finds evaluation texts inside pretraining text, on normalised words (case and punctuation ignored).

    A text leaks if it equals a banned text, or contains a banned text of at least ``min_words`` words (shorter
    ones, like "a domestic dog", would match everywhere). Matching indexes the banned texts by their first
    ``min_words`` words, so a scan costs one dictionary look-up per word.
    """

    def __init__(self, banned_texts: Iterable[str], min_words: int = 4) -> None:
        self.min_words = min_words
        self.hits = 0  # texts found leaking so far, for the corpus manifest
        self.exact: set[tuple[str, ...]] = set()
        self.by_prefix: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        for text in banned_texts:
            words = _words(text)
            if not words:
                continue
            self.exact.add(words)
            if len(words) >= min_words:
                self.by_prefix.setdefault(words[:min_words], set()).add(words)

    def __len__(self) -> int:
        return len(self.exact)

    def leaks(self, text: str) -> bool:
        found = self._contains_banned(_words(text))
        self.hits += found
        return found

    def _contains_banned(self, words: tuple[str, ...]) -> bool:
        if words in self.exact:
            return True
        width = self.min_words
        for start in range(len(words) - width + 1):
            candidates = self.by_prefix.get(words[start : start + width])
            if candidates and any(words[start : start + len(banned)] == banned for banned in candidates):
                return True
        return False


# ---------------------------------------------------------------- user text: files, folders, JSONL, datasets


def read_text_file(path: Path | str) -> list[str]:
    """A plain-text file -> documents: blank lines separate documents, lines inside one are joined."""
    return [" ".join(" ".join(lines).split()) for lines in split_paragraphs(read_utf8(Path(path)))]


def read_jsonl(path: Path | str, text_field: str = "text") -> list[str]:
    """A JSON-lines file -> documents: the ``text_field`` string of every line (blank lines skipped)."""
    path = Path(path)
    documents = []
    for line_number, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from error
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise ValueError(f"{path}:{line_number}: expected an object with a string field {text_field!r}")
        documents.append(record[text_field])
    return documents


def read_paths(paths: Iterable[Path | str], text_field: str = "text") -> list[str]:
    """Documents of files and folders (searched recursively): ``*.jsonl`` as JSON lines, anything else as text."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files.extend(sorted(path for path in entry.rglob("*") if path.is_file() and not path.name.startswith(".")))
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"corpus path {entry} does not exist")
    documents: list[str] = []
    for path in files:
        documents.extend(read_jsonl(path, text_field) if path.suffix == ".jsonl" else read_text_file(path))
    return documents


def read_hf_dataset(name: str, config: str | None = None, split: str = "train", text_field: str = "text") -> list[str]:
    """Documents of a Hugging Face ``datasets`` dataset; optional: needs ``datasets`` installed and reachable."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "reading a Hugging Face dataset needs the optional package `datasets` (pip install datasets); "
            "or pass plain-text / JSONL files instead"
        ) from error
    dataset = datasets.load_dataset(name, config, split=split)
    if text_field not in dataset.column_names:
        raise ValueError(f"dataset {name!r} has no column {text_field!r}; columns: {dataset.column_names}")
    return [text for text in dataset[text_field] if isinstance(text, str)]


# ---------------------------------------------------------------- splits


def hash_unit(text: str, seed: int = 0) -> float:
    """A number in ``[0, 1)`` from a seeded hash of ``text``: the basis of every split in this package.

    It depends on the text alone, so splits are stable across runs, machines and corpus additions, and equal
    texts always land in the same split.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_of(text: str, validation_fraction: float, seed: int = 0) -> str:
    """``"train"`` or ``"validation"`` for a pretraining document (see :func:`hash_unit`)."""
    return "validation" if hash_unit(text, seed) < validation_fraction else "train"


# ---------------------------------------------------------------- the corpus on disk


@dataclass
class Corpus:
    """A normalised corpus in a folder: ``<source>.txt`` (one document per line) and ``manifest.json``."""

    root: Path
    sources: dict[str, dict] = field(default_factory=dict)  # name -> {file, documents, words, bytes, sha256}
    validation_fraction: float = 0.01
    split_seed: int = 0

    @property
    def content_hash(self) -> str:
        """Identifies the text and its split: the key of every cache built from this corpus."""
        parts = [f"{name}:{info['sha256']}" for name, info in sorted(self.sources.items())]
        parts.append(f"split:{self.validation_fraction}:{self.split_seed}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def documents(self, split: str | None = None) -> Iterator[str]:
        """All documents, or those of one split (``"train"`` / ``"validation"``)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        for name in sorted(self.sources):
            with open(self.root / self.sources[name]["file"], encoding="utf-8") as handle:
                for line in handle:
                    document = line.rstrip("\n")
                    if split is None or split_of(document, self.validation_fraction, self.split_seed) == split:
                        yield document

    def summary(self) -> str:
        """One line per source: MB, documents, words."""
        lines = []
        for name, info in sorted(self.sources.items()):
            megabytes = info["bytes"] / 1e6
            lines.append(
                f"{name:>10}: {megabytes:7.2f} MB {info['documents']:>9,} documents {info['words']:>11,} words"
            )
        return "\n".join(lines)


def write_corpus(
    documents_by_source: dict[str, Iterable[str]],
    root: Path | str,
    validation_fraction: float = 0.01,
    split_seed: int = 0,
    extra: dict | None = None,
) -> Corpus:
    """Normalise and write documents (one line each) per source, then the manifest; empty input is an error."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sources = {}
    for name, documents in documents_by_source.items():
        normalised = [text for text in map(normalize_text, documents) if text]
        data = "".join(text + "\n" for text in normalised).encode("ascii")
        (root / f"{name}.txt").write_bytes(data)
        sources[name] = {
            "file": f"{name}.txt",
            "documents": len(normalised),
            "words": sum(len(text.split()) for text in normalised),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    if not any(info["documents"] for info in sources.values()):
        raise ValueError(f"the corpus is empty: no text in sources {sorted(documents_by_source)}")
    manifest = {
        "format_version": CORPUS_FORMAT_VERSION,
        "sources": sources,
        "validation_fraction": validation_fraction,
        "split_seed": split_seed,
        **(extra or {}),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks completion
    return Corpus(root, sources, validation_fraction, split_seed)


def load_corpus(root: Path | str) -> Corpus:
    """A corpus written by :func:`write_corpus`."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no corpus in {root} (manifest.json missing)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != CORPUS_FORMAT_VERSION:
        raise ValueError(
            f"corpus in {root} has format {manifest.get('format_version')}, expected "
            f"{CORPUS_FORMAT_VERSION}; delete the folder to rebuild it"
        )
    return Corpus(root, manifest["sources"], manifest["validation_fraction"], manifest["split_seed"])


def corpus_from_paths(
    paths: Iterable[Path | str],
    cache_dir: Path | str,
    validation_fraction: float = 0.01,
    split_seed: int = 0,
    text_field: str = "text",
) -> Corpus:
    """A corpus of your own text files / folders / JSONL, cached under ``cache_dir/corpus`` by content hash."""
    paths = [Path(path) for path in paths]
    documents = read_paths(paths, text_field)
    digest = hashlib.sha256(f"{CORPUS_FORMAT_VERSION}\n{text_field}\n".encode())
    for document in documents:
        digest.update(document.encode("utf-8") + b"\n")
    root = Path(cache_dir) / "corpus" / f"text-{digest.hexdigest()[:16]}"
    if (root / "manifest.json").is_file():
        return load_corpus(root)
    if not any(document.strip() for document in documents):
        raise ValueError(f"the corpus is empty: no text in {[str(path) for path in paths]}")
    return write_corpus({"text": documents}, root, validation_fraction, split_seed)
