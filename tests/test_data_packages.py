"""The default corpus's four sources and the local tasks, on small samples written in each package's real format.

The samples below imitate the files of ``dict-gcide``, ``dict-foldoc`` (dictd ``.dict.dz`` + ``.index``),
``wordnet-base`` (``data.*``) and ``fortunes``, laid out as the unpacked packages are. One optional test reads the
real packages when an earlier run left them in the cache.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ultrafastbert.data import prepare_default_data, sources
from ultrafastbert.data.corpus import LeakageFilter, normalize_text
from ultrafastbert.data.debian import (
    build_default_corpus,
    foldoc_documents,
    fortune_documents,
    gcide_documents,
    read_dictd,
    read_fortunes,
    read_wordnet,
    wordnet_documents,
)
from ultrafastbert.data.tasks import FORTUNE_TOPICS, LOCAL_TASKS, SplitConfig, build_local_tasks, evaluation_texts

GCIDE_ENTRIES = [
    (
        ("00-database-info", "00-web1913-info"),
        "00-database-info\n   This file was converted from the original database on:\n"
        "             Tue Feb 15 10:31:36 2022\n\nThe original data was distributed with the notice below.\n\n",
    ),
    (
        ("Affect", "Affected"),
        'Affect \\Af*fect"\\, v. t. [imp. & p. p. {Affected}; p. pr. & vb.\n'
        "   n. {Affecting}.] [L. affectus, p. p. of afficere to affect by\n"
        "   active agency; ad + facere to make. See {Fact}.]\n"
        "   1. To act upon; to produce an effect or change upon.\n"
        "      [1913 Webster]\n\n"
        "            As might affect the earth with cold heat. --Milton.\n"
        "      [1913 Webster]\n\n"
        "   Syn: To influence; operate; act on; concern; move.\n"
        "        [1913 Webster]\n\n",
    ),
    (
        ("Affear",),
        'Affear \\Af*fear"\\, v. t. [OE. aferen, AS. [=a]f?ran. See\n'
        "   {Afeard}.]\n"
        "   To frighten. [Obs.] --Spenser.\n"
        "   [1913 Webster]\n\n"
        "            This proud man affects imperial ?way. --Dryden.\n"
        "      [1913 Webster]\n\n",
    ),
    (
        ("Encyclopaedia",),
        'Encyclop[ae]dia \\En*cy`clo*p[ae]"di*a\\ (-p[=e]"d[i^]*[.a]), n.\n'
        "   A work in which the various branches of science or art are\n"
        "   discussed separately. --Gen. xxiv.\n"
        "   23.\n"
        "   [1913 Webster]\n\n",
    ),
    (
        ("Sloping bank",),
        "Sloping bank \\Sloping bank\\ n.\n"
        "   1. sloping land (especially the slope beside a body of water)\n\n"
        "   Syn: bank\n"
        "        [WordNet 1.5]\n\n"
        "   2. A bank which slopes gently. [PJC]\n\n",
    ),
]
GCIDE_DOCUMENTS = [
    "affect, v. t. 1. to act upon; to produce an effect or change upon. as might affect the earth with cold heat.",
    "affear, v. t. to frighten.",
    "encyclopaedia, n. a work in which the various branches of science or art are discussed separately.",
    "sloping bank n. 1. sloping land (especially the slope beside a body of water) 2. a bank which slopes gently.",
]

FOLDOC_ENTRIES = [
    (("00-database-short",), "00-database-short\n     The Free On-line Dictionary of Computing (19 January 2023)\n\n"),
    (
        ("Model-View-Presenter", "MVP"),
        "Model-View-Presenter\nMVP\n\n"
        "   <programming> (MVP) A {user interface} {architectural pattern}\n"
        "   where functions are separated between the model, view and\n"
        "   presenter.\n\n"
        "   {Wiki entry (https://en.wikipedia.org/wiki/Model-view-presenter)}.\n\n"
        "   [{Jargon File}]\n\n"
        "   (2014-11-27)\n\n",
    ),
    (
        ("modem",),
        "modem\n\n   <hardware, communications> (Modulator/demodulator) An\n"
        "   electronic device for converting between __serial__ data and\n   an audio signal.\n\n   (1998-05-27)\n\n",
    ),
]
FOLDOC_DOCUMENTS = [
    "model-view-presenter: (mvp) a user interface architectural pattern where functions are separated between the "
    "model, view and presenter. wiki entry.",
    "modem: (modulator/demodulator) an electronic device for converting between serial data and an audio signal.",
]

WORDNET_LICENCE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  By obtaining, using  \n"
)
WORDNET_FILES = {
    "noun": (
        "09213565 17 n 02 bank 0 side 0 001 @ 09335240 n 0000 | sloping land (especially the slope beside a body of "
        'water); "they pulled the canoe up on the bank"; "he sat on the bank of the river"  \n'
        "08420278 14 n 03 bank 0 depository_financial_institution 0 banking_concern 0 000 | a financial institution "
        'that accepts deposits and channels the money into lending activities; "he cashed a check at the bank"  \n'
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis that has been "
        'domesticated by man since prehistoric times; "the dog barked all night"  \n'
        "10114209 18 n 01 dog 0 000 | a dull unattractive unpleasant girl or woman; "
        '"she got a reputation as a frump"  \n'
        "07850329 13 n 01 cheese 0 000 | a solid food prepared from the pressed curd of milk  \n"
        "05000000 07 n 0a w0 0 w1 0 w2 0 w3 0 w4 0 w5 0 w6 0 w7 0 w8 0 w9 0 000 | a synset with ten words, "
        "counted in hexadecimal  \n"
    ),
    "verb": (
        "01926311 38 v 01 run 0 001 @ 01835496 v 0000 01 + 02 00 | move fast by using one's feet, with one foot off "
        'the ground at any given time; "the children run to the store"  \n'
        "02075049 38 v 01 run 1 000 01 + 01 00 | flee; take to one's heels; cut and run; "
        '"If you see this man, run!"  \n'
        "02000001 30 v 01 accompany_not 0 000 | without musical accompaniment  \n"
    ),
    "adj": (
        "00001740 00 a 01 able 0 000 | (usually followed by `to') having the necessary means or skill or know-how "
        'or authority to do something; "able to swim"  \n'
        "00002098 00 a 01 unable 0 000 | (usually followed by `to') not having the necessary means or skill or "
        'know-how; "unable to get to town without a car"  \n'
        '00004296 00 s 01 galore(ip) 0 000 | in great numbers; "food and wine galore"  \n'
    ),
    "adv": (
        '00001740 02 r 01 a_cappella 0 000 | without musical accompaniment; "they performed a cappella"  \n'
        "00002142 02 r 03 BC 0 B.C. 0 before_Christ 0 000 | before the Christian era; used following dates before "
        'the supposed year Christ was born; "in 200 BC"  \n'
    ),
}

COMPUTERS_FORTUNES = (
    "Comparing software engineering to classical engineering assumes that\n"
    "software has the ability to wear out.\n"
    "\t\t-- Anonymous\n"
    "%\n"
    "The computer is a moron.\n"
    "\t\t-- Peter Drucker,\n"
    "\t\t   in a lecture\n"
    "%\n"
    "A dialogue:\n"
    "-- What is a bug?\n"
    "-- An undocumented feature.\n"
    "%\n"
)


def _dictd(entries: list[tuple[tuple[str, ...], str]]) -> tuple[bytes, str]:
    """A ``.dict.dz`` body and its ``.index`` (offsets and lengths in dictd's base64 digits)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def encode(number: int) -> str:
        digits = ""
        while True:
            number, digit = divmod(number, 64)
            digits = alphabet[digit] + digits
            if not number:
                return digits

    data, index, offset = b"", [], 0
    for headwords, text in entries:
        body = text.encode("utf-8")
        index += [f"{headword}\t{encode(offset)}\t{encode(len(body))}" for headword in headwords]
        data, offset = data + body, offset + len(body)
    return gzip.compress(data), "\n".join(sorted(index)) + "\n"


def make_packages(root: Path) -> dict[str, Path]:
    """Unpacked-package folders holding the samples, as ``fetch_debian_packages`` returns them."""
    roots = {name: root / name for name in sources.DEFAULT_PACKAGES}
    for package, name, entries in (("dict-gcide", "gcide", GCIDE_ENTRIES), ("dict-foldoc", "foldoc", FOLDOC_ENTRIES)):
        folder = roots[package] / "usr/share/dictd"
        folder.mkdir(parents=True)
        data, index = _dictd(entries)
        (folder / f"{name}.dict.dz").write_bytes(data)
        (folder / f"{name}.index").write_text(index)
    wordnet = roots["wordnet-base"] / "usr/share/wordnet"
    wordnet.mkdir(parents=True)
    for name, lines in WORDNET_FILES.items():
        (wordnet / f"data.{name}").write_text(WORDNET_LICENCE + lines)
    fortunes = roots["fortunes"] / "usr/share/games/fortunes"
    fortunes.mkdir(parents=True)
    for topic in FORTUNE_TOPICS:
        entries = [f"Number {i} of the {topic} sayings: {topic} today, {topic} tomorrow.\n\t\t-- Author {i}\n"
                   for i in range(4)]  # fmt: skip
        (fortunes / topic).write_text("%\n".join(entries) + "%\n")
    (fortunes / "computers").write_text(COMPUTERS_FORTUNES)
    (fortunes / "ascii-art").write_text("  /\\_/\\\n ( o.o )\n%\n")
    (fortunes / "computers.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    (fortunes / "computers.u8").symlink_to("computers")
    return roots


@pytest.fixture
def packages(tmp_path: Path) -> dict[str, Path]:
    return make_packages(tmp_path / "packages")


def test_dictd_index_skips_pseudo_entries_and_aliases(packages):
    folder = packages["dict-gcide"] / "usr/share/dictd"
    entries = read_dictd(folder / "gcide.dict.dz", folder / "gcide.index")
    assert [entry.split(" ")[0] for entry in entries] == ["Affect", "Affear", "Encyclop[ae]dia", "Sloping"]


def test_gcide_cleaning(packages):
    assert gcide_documents(packages["dict-gcide"]) == GCIDE_DOCUMENTS


def test_gcide_leakage_drops_only_the_leaking_paragraph(packages):
    leakage = LeakageFilter(["Sloping land (especially the slope beside a body of water)."])
    documents = gcide_documents(packages["dict-gcide"], leakage)
    assert documents[-1] == "2. a bank which slopes gently."  # the paragraph with the headword went with it
    assert documents[:-1] == GCIDE_DOCUMENTS[:-1]
    assert leakage.hits == 1


def test_foldoc_cleaning(packages):
    assert foldoc_documents(packages["dict-foldoc"]) == FOLDOC_DOCUMENTS


def test_wordnet_parsing(packages):
    synsets = read_wordnet(packages["wordnet-base"] / "usr/share/wordnet")
    assert len(synsets) == 14  # licence lines skipped
    bank = synsets[0]
    assert (bank.offset, bank.pos, bank.lexname, bank.words) == ("09213565", "noun", "noun.object", ("bank", "side"))
    assert bank.definition == "sloping land (especially the slope beside a body of water)"
    assert bank.examples == ("they pulled the canoe up on the bank", "he sat on the bank of the river")
    by_offset = {(synset.pos, synset.offset): synset for synset in synsets}
    assert len(by_offset["noun", "05000000"].words) == 10  # w_cnt "0a" is hexadecimal
    galore = by_offset["adj", "00004296"]
    assert galore.words == ("galore",) and galore.lexname == "adj.all"  # satellite, marker "(ip)" dropped
    assert by_offset["adv", "00002142"].words == ("BC", "B.C.", "before Christ")
    assert by_offset["verb", "02075049"].lexname == "verb.motion"
    documents = wordnet_documents(packages["wordnet-base"])
    assert documents[2] == (
        'dog, domestic dog, canis familiaris: a member of the genus canis that has been domesticated by man since '
        'prehistoric times; "the dog barked all night"'
    )  # fmt: skip


def test_fortunes(packages):
    fortunes = read_fortunes(packages["fortunes"] / "usr/share/games/fortunes")
    assert sorted(fortunes) == sorted({*FORTUNE_TOPICS, "ascii-art"})  # .dat and .u8 files skipped
    assert fortunes["computers"] == [
        "Comparing software engineering to classical engineering assumes that software has the ability to wear out.",
        "The computer is a moron.",  # a two-line attribution removed
        "A dialogue: -- What is a bug? -- An undocumented feature.",  # dialogue dashes are not attributions
    ]
    documents = fortune_documents(packages["fortunes"])
    assert len(documents) == 3 + 4 * (len(FORTUNE_TOPICS) - 1)  # ascii-art is not prose
    assert "number 0 of the art sayings: art today, art tomorrow." in documents


def test_local_tasks_are_split_once_and_reused(packages, tmp_path):
    split = SplitConfig(validation_fraction=0.3, test_fraction=0.3, seed=1)
    tasks = build_local_tasks(packages, tmp_path / "cache", split)
    assert sorted(tasks) == sorted(LOCAL_TASKS)
    task_dir = next((tmp_path / "cache" / "tasks").iterdir())
    written = {path: path.stat().st_mtime_ns for path in task_dir.rglob("*") if path.is_file()}
    assert len(written) == len(LOCAL_TASKS) * 4  # three splits and meta.json each
    again = build_local_tasks(packages, tmp_path / "cache", split)
    assert {path: path.stat().st_mtime_ns for path in written} == written  # read back, not rewritten
    for name, task in tasks.items():
        assert again[name] == task
        texts = {split: {normalize_text(e.text_a) for e in examples} for split, examples in
                 {"train": task.train, **task.evaluation_splits()}.items()}  # fmt: skip
        assert sum(map(len, texts.values())) == len(set().union(*texts.values())), f"{name}: a text in two splits"
        meta = json.loads((task_dir / name / "meta.json").read_text())
        assert meta["class_balance"]["train"] == task.class_balance("train")
        assert meta["sizes"] == {"train": len(task.train), "validation": len(task.validation), "test": len(task.test)}

    pos = tasks["wn-pos"]
    assert pos.label_names == ("noun", "verb", "adj", "adv") and pos.metric_names == ("accuracy", "macro_f1")
    all_pos = pos.train + pos.validation + pos.test
    assert len(all_pos) == 12  # 14 synsets, the definition shared by a verb and an adverb dropped as ambiguous
    assert "without musical accompaniment" not in {example.text_a for example in all_pos}
    assert {example.text_a: pos.label_names[example.label] for example in all_pos}["in great numbers"] == "adj"

    supersense = tasks["wn-supersense"]
    assert supersense.num_labels == 45 and tasks["wn-supersense-noun"].num_labels == 26

    match = tasks["wn-sense-match"]
    pairs = match.train + match.validation + match.test
    # usable: the examples of both "bank" nouns, both "run" verbs and the first "dog" (the second's lacks the word)
    assert len(pairs) == 2 * 6
    assert sum(example.label for example in pairs) == 6  # balanced by construction
    own = {e.text_a: e.text_b for e in pairs if e.label == 1}
    other = {e.text_a: e.text_b for e in pairs if e.label == 0}
    assert other["the dog barked all night"] == "a dull unattractive unpleasant girl or woman"
    assert other["If you see this man, run!"].startswith("move fast by using one's feet")
    assert own["he cashed a check at the bank"].startswith("a financial institution")
    assert other["he cashed a check at the bank"].startswith("sloping land")

    topics = tasks["fortune-topic"]
    assert topics.label_names == FORTUNE_TOPICS
    assert len(topics.train + topics.validation + topics.test) == 3 + 4 * (len(FORTUNE_TOPICS) - 1)


def test_default_corpus_excludes_evaluation_texts(packages, tmp_path):
    split = SplitConfig(validation_fraction=0.3, test_fraction=0.3, seed=1)
    tasks = build_local_tasks(packages, tmp_path / "cache", split)
    banned = evaluation_texts(tasks.values())
    assert banned  # the samples are large enough to put something into evaluation
    corpus = build_default_corpus(packages, tmp_path / "cache", banned, validation_fraction=0.2)
    assert sorted(corpus.sources) == ["foldoc", "fortunes", "gcide", "wordnet"]
    text = "\n".join(corpus.documents())
    for banned_text in banned:
        assert normalize_text(banned_text) not in text
    manifest = json.loads((corpus.root / "manifest.json").read_text())
    assert manifest["banned_texts"] == len(banned)
    assert sum(manifest["removed_for_leakage"].values()) > 0
    assert build_default_corpus(packages, tmp_path / "cache", banned, validation_fraction=0.2) == corpus  # cached
    with pytest.warns(UserWarning, match="without a leakage filter"):
        unfiltered = build_default_corpus(packages, tmp_path / "cache", [], validation_fraction=0.2)
    assert unfiltered.root != corpus.root  # the cache key covers the evaluation texts


def test_prepare_default_data_wires_fetch_tasks_and_corpus(tmp_path):
    cache = tmp_path / "cache"
    for name, root in make_packages(cache / "packages").items():
        (root / sources._COMPLETE_MARKER).write_text(f"{name}_1.0_all.deb\n")  # as if fetched earlier
    data = prepare_default_data(cache, validation_fraction=0.2, split=SplitConfig(0.3, 0.3, seed=1))
    assert sorted(data.tasks) == sorted(LOCAL_TASKS)
    assert data.corpus.root.parent == cache / "corpus"
    text = "\n".join(data.corpus.documents())
    assert all(normalize_text(banned) not in text for banned in evaluation_texts(data.tasks.values()))


REAL_PACKAGES_PRESENT = all(sources.is_unpacked(name) for name in sources.DEFAULT_PACKAGES)


@pytest.mark.skipif(not REAL_PACKAGES_PRESENT, reason="the Debian packages are not in the cache (no network here)")
def test_real_packages_parse():
    roots = {name: sources.package_dir(name) for name in sources.DEFAULT_PACKAGES}
    synsets = read_wordnet(roots["wordnet-base"] / "usr/share/wordnet")
    assert len(synsets) == 117659
    fortunes = read_fortunes(roots["fortunes"] / "usr/share/games/fortunes")
    assert set(FORTUNE_TOPICS) <= set(fortunes) and sum(map(len, fortunes.values())) > 14000
    foldoc = foldoc_documents(roots["dict-foldoc"])
    assert len(foldoc) > 10000 and all(document.isascii() for document in foldoc)
    assert sum("{" in document for document in foldoc) < 10  # link markup gone (a few headwords hold braces)
    folder = roots["dict-gcide"] / "usr/share/dictd"
    assert len(read_dictd(folder / "gcide.dict.dz", folder / "gcide.index")) > 120000
