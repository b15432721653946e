"""Normalisation, user text (files, folders, JSONL), the corpus on disk and its split, the leakage filter."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultrafastbert.data.corpus import (
    LeakageFilter,
    corpus_from_paths,
    load_corpus,
    normalize_text,
    read_hf_dataset,
    read_jsonl,
    read_paths,
    split_of,
    write_corpus,
)
from ultrafastbert.data.tokenizer import build_normalizer


def test_normalize_text_lowercases_strips_accents_keeps_ascii():
    assert normalize_text("  Café DÉJÀ\tvu —  naïve\nCoöperation ") == "cafe deja vu naive cooperation"
    assert normalize_text("``Quoted''  text") == '"quoted" text'
    assert normalize_text("日本語 only") == "only"
    assert normalize_text("\x1c\x1f") == ""


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_normalize_text_equals_the_tokenizer_normalizer(text):
    assert normalize_text(text) == build_normalizer().normalize_str(text)


def test_read_paths_text_folders_and_jsonl(tmp_path):
    (tmp_path / "docs" / "nested").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("First document,\nstill the first.\n\n\nSecond document.\n")
    (tmp_path / "docs" / "nested" / "b.jsonl").write_text('{"text": "From JSON."}\n\n{"text": "Another."}\n')
    (tmp_path / "docs" / ".hidden").write_text("ignored\n")
    (tmp_path / "single.txt").write_text("Alone.")
    documents = read_paths([tmp_path / "docs", tmp_path / "single.txt"])
    assert documents == ["First document, still the first.", "Second document.", "From JSON.", "Another.", "Alone."]


def test_bad_user_text_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_paths([tmp_path / "missing.txt"])
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "field.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"field.jsonl:1: expected an object with a string field 'text'"):
        read_jsonl(tmp_path / "field.jsonl")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        read_paths([tmp_path / "latin1.txt"])


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("\n \n\n")
    for paths in ([tmp_path / "empty"], [tmp_path / "blank.txt"]):
        with pytest.raises(ValueError, match="the corpus is empty"):
            corpus_from_paths(paths, tmp_path / "cache")
    with pytest.raises(ValueError, match="the corpus is empty"):
        write_corpus({"a": ["", "   "]}, tmp_path / "out")


def test_corpus_on_disk_and_its_split(tmp_path):
    documents = [f"Document number {i}, with Ünïcode." for i in range(400)]
    corpus = write_corpus({"first": documents[:300], "second": documents[300:]}, tmp_path / "c", 0.1, split_seed=3)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["sources"]["first"]["documents"] == 300
    assert manifest["sources"]["second"]["words"] == 100 * 5
    assert (tmp_path / "c" / "first.txt").read_text().splitlines()[0] == "document number 0, with unicode."
    loaded = load_corpus(tmp_path / "c")
    assert loaded == corpus and loaded.content_hash == corpus.content_hash
    train, validation = list(loaded.documents("train")), list(loaded.documents("validation"))
    assert sorted(train + validation) == sorted(loaded.documents()) and len(train) + len(validation) == 400
    assert 20 <= len(validation) <= 60  # ~10%
    assert all(split_of(document, 0.1, 3) == "validation" for document in validation)
    other_seed = write_corpus({"first": documents[:300], "second": documents[300:]}, tmp_path / "d", 0.1, 4)
    assert other_seed.content_hash != corpus.content_hash
    with pytest.raises(ValueError, match="unknown split"):
        next(corpus.documents("test"))
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        load_corpus(tmp_path / "nothing")


def test_corpus_from_paths_is_cached_by_content(tmp_path):
    (tmp_path / "a.txt").write_text("One.\n\nTwo.\n")
    first = corpus_from_paths([tmp_path / "a.txt"], tmp_path / "cache")
    assert list(first.documents()) == ["one.", "two."]
    assert corpus_from_paths([tmp_path / "a.txt"], tmp_path / "cache") == first
    (tmp_path / "a.txt").write_text("One.\n\nThree.\n")
    assert corpus_from_paths([tmp_path / "a.txt"], tmp_path / "cache").root != first.root


def test_leakage_filter():
    leakage = LeakageFilter(["A member of the genus Canis", "a domestic dog", ""])
    assert len(leakage) == 2
    assert leakage.leaks("Dog: a member of the genus canis; it barks.")  # contained, case and punctuation ignored
    assert leakage.leaks("A domestic dog!")  # equal
    assert not leakage.leaks("pooch: a domestic dog")  # short banned texts match only whole texts
    assert not leakage.leaks("a member of the genus felis")
    assert leakage.hits == 2


def test_hugging_face_datasets_is_optional():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="optional package `datasets`.*plain-text / JSONL"):
            read_hf_dataset("wikitext")
    else:
        pytest.skip("`datasets` is installed; loading needs network access")
