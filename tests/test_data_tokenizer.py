"""The WordPiece tokenizer: special-token ids, templates, round trip, saving for AutoTokenizer, caching."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from ultrafastbert.data.corpus import normalize_text, write_corpus
from ultrafastbert.data.tokenizer import tokenizer_fingerprint, tokenizer_for_corpus, train_tokenizer
from ultrafastbert.model.crammedbert.tokenizer import SPECIAL_TOKENS, load_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A café in Zürich serves crème brûlée, the naïve fox pays.",
    "Dictionaries define words, a definition, an example, a quotation.",
    "Packing documents into sequences of one hundred and twenty eight tokens.",
] * 20


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    with pytest.warns(UserWarning, match="yields only"):  # a tiny corpus cannot fill 500 tokens
        tokenizer = train_tokenizer(TEXTS, vocab_size=500, output_dir=folder)
    return tokenizer, folder


def test_special_tokens_have_fixed_ids_with_pad_zero(saved):
    tokenizer, _ = saved
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS.values()]
    assert ids == list(range(7))
    assert tokenizer.pad_token_id == 0
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id) == (1, 2, 3)


def test_templates(saved):
    tokenizer, _ = saved
    single = tokenizer.convert_ids_to_tokens(tokenizer("the fox")["input_ids"])
    assert single == ["the", "fox", "<sep>"]  # "$A <sep>": how documents are packed
    pair = tokenizer.convert_ids_to_tokens(tokenizer("the fox", "the dog")["input_ids"])
    assert pair == ["<cls>", "the", "fox", "<sep>", "the", "dog", "<sep>"]
    assert "token_type_ids" not in tokenizer("the fox")


def test_round_trip_is_the_normalised_text(saved):
    tokenizer, _ = saved
    for text in TEXTS[:4]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == normalize_text(text)
    assert tokenizer.convert_ids_to_tokens(tokenizer("Zürich")["input_ids"])[0] == "zurich"  # uncased, ASCII
    assert tokenizer.unk_token_id in tokenizer("{}")["input_ids"]  # characters never seen in training


def test_saved_folder_loads_with_autotokenizer(saved):
    tokenizer, folder = saved
    assert json.loads((folder / "special_tokens_map.json").read_text()) == SPECIAL_TOKENS
    loaded = AutoTokenizer.from_pretrained(folder)
    for name, token in SPECIAL_TOKENS.items():
        assert getattr(loaded, name) == token
    assert (loaded.pad_token_id, loaded.mask_token_id, loaded.model_max_length) == (0, 3, 128)
    assert loaded("A café, the fox.")["input_ids"] == tokenizer("A café, the fox.")["input_ids"]
    assert (
        tokenizer_fingerprint(loaded)
        == tokenizer_fingerprint(load_tokenizer(folder))
        == tokenizer_fingerprint(tokenizer)
    )


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer(["", "  "], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size must exceed"):
        train_tokenizer(TEXTS, vocab_size=7)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tokenizer_for_corpus_trains_once(tmp_path):
    corpus = write_corpus({"text": TEXTS * 3}, tmp_path / "corpus", validation_fraction=0.2)
    with pytest.warns(UserWarning, match="yields only"):
        first = tokenizer_for_corpus(corpus, vocab_size=400)
    (folder,) = (tmp_path / "corpus" / "tokenizers").iterdir()  # cached beside the corpus
    assert folder.name.endswith(f"{corpus.content_hash}-400")
    second = tokenizer_for_corpus(corpus, vocab_size=400)  # from the cache: no training, no warning
    assert tokenizer_fingerprint(second) == tokenizer_fingerprint(first)
