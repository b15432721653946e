"""The embedded default corpus: real English from four Debian packages (``docs/data.md``), parsed and cleaned.

GCIDE (Webster 1913 and additions) and FOLDOC come as dictd dictionaries, WordNet as its database files, fortunes
as ``%``-separated files. Each parser turns its package's own format into plain paragraphs and documents; the
local tasks read WordNet and fortunes from here too. :func:`build_default_corpus` writes them, with evaluation
texts removed, as one cached :class:`~.corpus.Corpus`.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .corpus import (
    CORPUS_FORMAT_VERSION,
    Corpus,
    LeakageFilter,
    load_corpus,
    normalize_text,
    read_utf8,
    split_paragraphs,
    write_corpus,
)

# ---------------------------------------------------------------- dictd dictionaries (GCIDE, FOLDOC)

_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _decode_dictd_number(digits: str) -> int:
    value = 0
    for digit in digits:
        value = value * 64 + _BASE64.index(digit)
    return value


def read_dictd(dict_path: Path | str, index_path: Path | str) -> list[str]:
    """Entries of a dictd dictionary in file order, each the raw text of one article.

    The ``.index`` gives each article's byte range in the (gzip-compatible) ``.dict.dz``; several headwords may
    share one article, which is returned once. The ``00-database-*`` pseudo-entries (licence, URL) are skipped.
    """
    dict_path, index_path = Path(dict_path), Path(index_path)
    for path in (dict_path, index_path):
        if not path.is_file():
            raise FileNotFoundError(f"dictd file {path} not found")
    data = gzip.decompress(dict_path.read_bytes()) if dict_path.suffix == ".dz" else dict_path.read_bytes()
    ranges: dict[int, int] = {}
    skipped: set[int] = set()  # offsets of the pseudo-entries, also reached through aliases (00-gcide-long)
    for line_number, line in enumerate(read_utf8(index_path).splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"{index_path}:{line_number}: expected 'headword<TAB>offset<TAB>length', got {line!r}")
        offset = _decode_dictd_number(fields[1])
        ranges[offset] = _decode_dictd_number(fields[2])
        if fields[0].startswith(("00-database", "00database")):
            skipped.add(offset)
    ranges = {start: length for start, length in ranges.items() if start not in skipped}
    # GCIDE 0.48 has a few stray Windows-1252 bytes; they become U+FFFD, which normalisation drops
    return [data[start : start + length].decode("utf-8", "replace") for start, length in sorted(ranges.items())]



# GCIDE writes letters with diacritics as bracketed markup: [=a] (macron), [e^], ['e], [ae], [imac], ...
_GCIDE_LETTER = re.compile(r"\[[=\-'\"`~^.,*]?([a-zA-Z]{1,2})\^?\]")
_GCIDE_NAMED_LETTERS = {"[imac]": "i", "[eth]": "th", "[th]": "th", "[ng]": "ng", "[yogh]": "y", "[udd]": "u"}
_GCIDE_ATTRIBUTION = re.compile(r"\s*--[A-Z][^\"]*?(?=\s+\"|$)")  # --Shak., --Jer. Taylor., --Gen. xxiv. 23.
# \Af*fect"\ and the respelling after it, "(af*fekt")", but not a field label such as "(Bot.)"
_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\(\s*\((?![A-Z])[^()]*\))?")
_INNERMOST_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_RESPELLING = re.compile(r"\([^()]*[*`][^()]*\)")  # (ab"a*tis; French a`ba`te")
_MARKED_WORD = re.compile(r"[A-Za-z]+[\"*`][A-Za-z*`\"]*[A-Za-z]")  # run-on forms: Ab`i*o*ge*net"ic*al*ly
_PLACEHOLDER = re.compile(r"\?\w")  # a character GCIDE could not render, e.g. "[=a]f?ran", "?way"


def _drop_brackets(text: str) -> str:
    """Remove ``[...]`` spans (etymologies, ``[1913 Webster]``, ``[Obs.]``), innermost first; stray brackets too."""
    while True:
        text, count = _INNERMOST_BRACKETS.subn("", text)
        if not count:
            return text.replace("[", "").replace("]", "")


def _unmark_word(match: re.Match) -> str:
    word = match.group()
    return re.sub(r"[*`\"]", "", word) if "*" in word or "`" in word else word


def clean_gcide_entry(entry: str) -> list[str]:
    """One GCIDE article -> its prose paragraphs (definitions, notes, quotations), markup removed.

    Dropped: pronunciations, etymologies and every other ``[...]`` tag, ``{}`` link braces, ``--Author``
    attributions, ``Syn:`` word lists, and paragraphs with ``?`` placeholders for unrenderable characters.
    """
    for markup, letters in _GCIDE_NAMED_LETTERS.items():
        entry = entry.replace(markup, letters)
    entry = _GCIDE_LETTER.sub(r"\1", entry)
    cleaned = []
    for lines in split_paragraphs(entry):
        text = " ".join(line.strip() for line in lines)
        if text.startswith("Syn:"):
            continue
        text = _drop_brackets(_PRONUNCIATION.sub("", text))
        text = _GCIDE_ATTRIBUTION.sub("", _RESPELLING.sub("", text)).replace("{", "").replace("}", "")
        if "*" in text or "`" in text:
            text = _MARKED_WORD.sub(_unmark_word, text)
        text = " ".join(text.removeprefix("Note:").split()).replace(" ,", ",")
        if _PLACEHOLDER.search(text) or len(text) < 2:
            continue
        cleaned.append(text)
    return cleaned


_FOLDOC_DATE = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)$")  # "(2014-11-27)": when the entry was last edited
_FOLDOC_CITATION = re.compile(r"^\[.*\]\.?$")  # "[{Jargon File}]": where the entry came from
_FOLDOC_DOMAIN = re.compile(r"^<[^<>]*>\s*")  # "<programming>" at the start of a definition
_FOLDOC_URL_LINK = re.compile(r"\{\(?[a-z]+://[^{}]*\}")  # {(http://...)}: a bare link
_FOLDOC_LINK_URL = re.compile(r"\s*\([^()\s]*(?:\.html?|://)[^()\s]*\)")  # "{Manual (http://...)}" -> "Manual"


def clean_foldoc_entry(entry: str) -> list[str]:
    """One FOLDOC article -> ``"headword: definition"`` and its further paragraphs, markup and dates removed."""
    paragraphs = split_paragraphs(entry)
    if not paragraphs:
        return []
    headword = paragraphs[0][0].strip()
    cleaned = []
    for lines in paragraphs[1:]:
        text = " ".join(line.strip() for line in lines)
        if _FOLDOC_DATE.match(text) or _FOLDOC_CITATION.match(text):
            continue
        text = _FOLDOC_URL_LINK.sub("", _FOLDOC_DOMAIN.sub("", text))
        text = _FOLDOC_LINK_URL.sub("", text).replace("{", "").replace("}", "").replace("__", "")
        text = " ".join(text.split())
        if text:
            cleaned.append(text)
    if cleaned:
        cleaned[0] = f"{headword}: {cleaned[0]}"
    return cleaned


# ---------------------------------------------------------------- WordNet

WORDNET_POS = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}  # satellites ("s") are adjectives
WORDNET_FILES = ("noun", "verb", "adj", "adv")
# lexnames(5WN): the 45 lexicographer files, indexed by field 2 of a data line
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its words (lemmas, spaces not underscores), definition and example sentences."""

    offset: str
    pos: str  # noun, verb, adj, adv
    lexname: str  # noun.animal, verb.motion, ...
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def parse_wordnet_line(line: str) -> Synset:
    """``offset lex_filenum ss_type w_cnt word lex_id ... | definition; "example"; ...`` -> :class:`Synset`."""
    head, separator, gloss = line.partition(" | ")
    fields = head.split()
    if not separator or len(fields) < 4:
        raise ValueError(f"not a WordNet data line: {line[:80]!r}")
    word_count = int(fields[3], 16)  # w_cnt is two hexadecimal digits
    # adjectives may carry a syntactic marker: "galore(ip)"
    words = tuple(re.sub(r"\([a-z]+\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(word_count))
    gloss = gloss.strip()
    quote = gloss.find('"')
    definition = (gloss if quote < 0 else gloss[:quote]).strip().rstrip(";").strip()
    examples = tuple(example.strip() for example in re.findall(r'"([^"]*)"', gloss[quote:] if quote >= 0 else ""))
    return Synset(fields[0], WORDNET_POS[fields[2]], LEXNAMES[int(fields[1])], words, definition, examples)


def read_wordnet(wordnet_dir: Path | str) -> list[Synset]:
    """All synsets of ``data.{noun,verb,adj,adv}`` in ``wordnet_dir``; the licence header lines are skipped."""
    synsets = []
    for name in WORDNET_FILES:
        path = Path(wordnet_dir) / f"data.{name}"
        if not path.is_file():
            raise FileNotFoundError(f"WordNet file {path} not found")
        for line in read_utf8(path).splitlines():
            if line.strip() and not line.startswith("  "):  # licence lines start with two spaces
                synsets.append(parse_wordnet_line(line))
    return synsets


def wordnet_document(synset: Synset) -> str:
    """The synset as one line of prose: ``words: definition; "example"; ...``."""
    examples = "".join(f'; "{example}"' for example in synset.examples)
    return f"{', '.join(synset.words)}: {synset.definition}{examples}"


# ---------------------------------------------------------------- fortunes

_FORTUNE_ATTRIBUTION = re.compile(r"^\s+--\s*\S")  # "\t\t-- Robert Heinlein"
NON_PROSE_FORTUNES = frozenset({"ascii-art"})


def clean_fortune(entry: str) -> str:
    """One fortune -> one line of text, its trailing ``-- Author`` attribution lines removed."""
    lines = entry.splitlines()
    for index in range(len(lines) - 1, 0, -1):
        if _FORTUNE_ATTRIBUTION.match(lines[index]):
            lines = lines[:index]
            break
    return " ".join(" ".join(lines).split())


def read_fortune_file(path: Path | str) -> list[str]:
    """Entries of one fortune file (separated by lines holding only ``%``), cleaned, empty ones dropped."""
    entries = re.split(r"^%[ \t]*$", read_utf8(Path(path)), flags=re.MULTILINE)
    return [text for text in (clean_fortune(entry) for entry in entries) if text]


def read_fortunes(fortunes_dir: Path | str) -> dict[str, list[str]]:
    """Category (file name) -> its fortunes, for every fortune file in ``fortunes_dir`` (``.dat``/``.u8`` skipped)."""
    folder = Path(fortunes_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"fortunes folder {folder} not found")
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.is_symlink() and not path.suffix)
    if not files:
        raise FileNotFoundError(f"no fortune files in {folder}")
    return {path.name: read_fortune_file(path) for path in files}


# ---------------------------------------------------------------- the default corpus, source by source


def gcide_documents(package_root: Path | str, leakage: LeakageFilter | None = None) -> list[str]:
    """GCIDE articles -> documents (one per article), paragraphs that contain evaluation text dropped."""
    folder = Path(package_root) / "usr/share/dictd"
    entries = read_dictd(folder / "gcide.dict.dz", folder / "gcide.index")
    return _join_paragraphs((clean_gcide_entry(entry) for entry in entries), leakage)


def foldoc_documents(package_root: Path | str, leakage: LeakageFilter | None = None) -> list[str]:
    """FOLDOC articles -> documents (one per article), paragraphs that contain evaluation text dropped."""
    folder = Path(package_root) / "usr/share/dictd"
    entries = read_dictd(folder / "foldoc.dict.dz", folder / "foldoc.index")
    return _join_paragraphs((clean_foldoc_entry(entry) for entry in entries), leakage)


def wordnet_documents(package_root: Path | str, leakage: LeakageFilter | None = None) -> list[str]:
    """WordNet synsets -> documents (one per synset); a synset whose definition or an example leaks is dropped."""
    documents = []
    for synset in read_wordnet(Path(package_root) / "usr/share/wordnet"):
        if leakage is not None and any(leakage.leaks(text) for text in (synset.definition, *synset.examples)):
            continue
        documents.append(normalize_text(wordnet_document(synset)))
    return documents


def fortune_documents(package_root: Path | str, leakage: LeakageFilter | None = None) -> list[str]:
    """Fortunes -> documents (one per fortune; ``ascii-art`` skipped); leaking fortunes dropped."""
    documents = []
    for category, entries in read_fortunes(Path(package_root) / "usr/share/games/fortunes").items():
        if category in NON_PROSE_FORTUNES:
            continue
        documents.extend(normalize_text(text) for text in entries if leakage is None or not leakage.leaks(text))
    return documents


def _join_paragraphs(articles: Iterable[list[str]], leakage: LeakageFilter | None) -> list[str]:
    documents = []
    for paragraphs in articles:
        kept = [text for text in paragraphs if leakage is None or not leakage.leaks(text)]
        document = normalize_text(" ".join(kept))
        if document:
            documents.append(document)
    return documents


# source name -> (Debian package, document builder)
DEFAULT_SOURCES = {
    "gcide": ("dict-gcide", gcide_documents),
    "wordnet": ("wordnet-base", wordnet_documents),
    "foldoc": ("dict-foldoc", foldoc_documents),
    "fortunes": ("fortunes", fortune_documents),
}


def build_default_corpus(
    package_roots: dict[str, Path],
    cache_dir: Path | str,
    banned_texts: Iterable[str],
    validation_fraction: float = 0.01,
    split_seed: int = 0,
) -> Corpus:
    """The embedded corpus from unpacked packages (:func:`sources.fetch_debian_packages`), cached.

    ``banned_texts`` are the evaluation texts of the local tasks (``tasks.evaluation_texts``): they are removed
    from the pretraining text. The cache key covers them, the packages and this cleaning code's version.
    """
    banned = sorted(set(banned_texts))
    digest = hashlib.sha256(f"{CORPUS_FORMAT_VERSION}\n{validation_fraction}\n{split_seed}\n".encode())
    for source, (package, _) in sorted(DEFAULT_SOURCES.items()):
        digest.update(f"{source}:{_hash_tree(Path(package_roots[package]))}\n".encode())
    for text in banned:
        digest.update(text.encode("utf-8") + b"\n")
    root = Path(cache_dir) / "corpus" / f"default-{digest.hexdigest()[:16]}"
    if (root / "manifest.json").is_file():
        return load_corpus(root)
    leakage = LeakageFilter(banned)
    if not leakage:
        warnings.warn("building the default corpus without a leakage filter (no evaluation texts given)", stacklevel=2)
    documents, removed = {}, {}
    for source, (package, builder) in DEFAULT_SOURCES.items():
        hits_before = leakage.hits
        documents[source] = builder(package_roots[package], leakage)
        removed[source] = leakage.hits - hits_before
    # removed: paragraphs for the dictionaries, whole documents for WordNet synsets and fortunes
    extra = {"banned_texts": len(banned), "removed_for_leakage": removed}
    return write_corpus(documents, root, validation_fraction, split_seed, extra)


def _hash_tree(folder: Path) -> str:
    """Hash of every file's path and bytes under ``folder``: the identity of an unpacked package."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
