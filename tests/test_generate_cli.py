"""``ultrafastbert generate``: it streams the continuation a plain greedy loop computes, sampling follows the seed,
and every mistake ends in one line before the weights load; and ``pretrain`` trains a decoder preset on
next-token prediction, whose folder ``generate`` then continues."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
from model_helpers import tiny_pretrained
from transformers import TextStreamer

from ultrafastbert.cli import main
from ultrafastbert.data.tokenizer import train_tokenizer
from ultrafastbert.model import load_tokenizer
from ultrafastbert.model.ultrafastgpt import UltraFastGPTConfig, UltraFastGPTForCausalLM
from ultrafastbert.train import generation

FIXTURES = Path(__file__).parent / "fixtures"
WORDS = "the a cat dog sat ran on under mat rug big small red blue quick slow and then it was".split()
CONTEXT = 24


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    """A 1-layer UltraFastGPT-2x2 (random weights) with a tokenizer trained on ``WORDS``, ending texts at <sep>."""
    folder = tmp_path_factory.mktemp("decoder")
    torch.manual_seed(0)
    tokenizer = train_tokenizer([" ".join(WORDS)] * 20, vocab_size=60, output_dir=folder)
    config = UltraFastGPTConfig.from_preset(
        "tiny-gpt-fff-2x2",
        vocab_size=len(tokenizer),
        max_position_embeddings=CONTEXT,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    UltraFastGPTForCausalLM(config).save_pretrained(folder)
    return folder


def greedy_without_cache(folder: Path, prompt: str, new_tokens: int) -> str:
    """The greedy continuation by full forwards of the growing sequence (no KV cache, no ``generate``)."""
    tokenizer = load_tokenizer(folder)
    model = UltraFastGPTForCausalLM.from_pretrained(folder).eval()
    end = model.config.eos_token_id
    ids = [end, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == end:
                break
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_generate_streams_the_greedy_continuation(decoder, capsys, monkeypatch):
    chunks = []
    finalized = TextStreamer.on_finalized_text

    def recording(self, text, stream_end=False):
        chunks.append(text)
        finalized(self, text, stream_end)

    monkeypatch.setattr(TextStreamer, "on_finalized_text", recording)
    assert main(["generate", "--model", str(decoder), "--max-new-tokens", "12", "the big cat"]) == 0
    captured = capsys.readouterr()
    expected = greedy_without_cache(decoder, "the big cat", 12)
    assert captured.out == expected + "\n"
    assert captured.out.startswith("the big cat ") and len(expected.split()) > 3
    assert len([chunk for chunk in chunks if chunk]) >= 2  # printed as it came, not all at the end
    assert "new tokens in" in captured.err and "tokens/s" in captured.err


def test_sampling_follows_the_seed(decoder, capsys):
    def sample(seed: int) -> str:
        args = ["generate", "--model", str(decoder), "--do-sample", "--temperature", "1.5", "--top-k", "20"]
        assert main([*args, "--seed", str(seed), "--max-new-tokens", "12", "--quiet", "the dog"]) == 0
        return capsys.readouterr().out

    first = sample(1)
    assert first.startswith("the dog")
    assert sample(1) == first
    assert len({first, sample(2), sample(3)}) > 1


PROMPT_ERRORS = [
    (["--model", "{missing}", "the cat"], "argument --model: no folder"),
    (["--model", "{encoder}", "the cat"], "holds CrammedBertForMaskedLM, not a causal decoder"),
    (["--model", str(FIXTURES / "mlm_fff_1x3"), "the cat"], "holds ScriptableLMForPreTraining, not a causal decoder"),
    (["--model", "{decoder}", ""], "the prompt is empty"),
    (["--model", "{decoder}", "   "], "the prompt is empty"),
    (["--model", "{decoder}", "\u65e5\u672c"], "has no tokens the model's tokenizer keeps"),
    (["--model", "{decoder}", " ".join(["cat"] * 30)], "the prompt is 31 tokens, the model's context only 24"),
    (
        ["--model", "{decoder}", "--max-new-tokens", "22", "the cat"],
        "the prompt (3 tokens) and --max-new-tokens 22 exceed the model's context of 24 tokens: ask for at most 21",
    ),
    (["--model", "{decoder}", "--top-k", "5", "the cat"], "--top-k only applies to sampling: add --do-sample"),
]


FLAG_ERRORS = [  # argparse's: usage, then the one line
    (["--model", "{decoder}", "--max-new-tokens", "0", "the cat"], "--max-new-tokens: must be > 0, got 0"),
    (["--model", "{decoder}", "--max-new-tokens", "-3", "the cat"], "--max-new-tokens: must be > 0, got -3"),
    (["--model", "{decoder}", "--do-sample", "--top-p", "0", "the cat"], "--top-p: must lie in (0, 1], got 0.0"),
    (["--model", "{decoder}", "--do-sample", "--temperature", "0", "x"], "--temperature: must be > 0, got 0.0"),
]


@pytest.mark.parametrize(("argv", "reason"), PROMPT_ERRORS + FLAG_ERRORS)
def test_mistakes_end_in_one_line_before_the_weights_load(decoder, tmp_path, monkeypatch, capsys, argv, reason):
    if "{encoder}" in argv:
        tiny_pretrained(tmp_path / "encoder", WORDS)

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the mistake was found")

    monkeypatch.setattr(generation.AutoModelForCausalLM, "from_pretrained", no_loading)
    argv = [word.format(missing=tmp_path / "missing", decoder=decoder, encoder=tmp_path / "encoder") for word in argv]
    with pytest.raises(SystemExit) as refused:
        main(["generate", *argv])
    # argparse prints its usage and the error line and exits with 2; the command's own checks exit with the line
    message = capsys.readouterr().err.splitlines()[-1] if refused.value.code == 2 else str(refused.value.code)
    assert message.startswith("ultrafastbert generate: error: ") and reason in message and "\n" not in message
    assert capsys.readouterr().out == ""  # nothing generated


@pytest.fixture(scope="module")
def pretrained_decoder(tmp_path_factory) -> Path:
    """``ultrafastbert pretrain`` of a decoder preset, 6 steps on a small corpus of the ``WORDS``."""
    root = tmp_path_factory.mktemp("causal-cli")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=rng.randint(20, 60))) for _ in range(600)))
    args = ["pretrain", "--output", str(root / "run"), "--corpus", str(corpus), "--preset", "tiny-gpt-fff-1x3"]
    args += ["--vocab-size", "80", "--seq-len", "32", "--max-steps", "6", "--micro-batch", "8", "--batch", "16"]
    assert main([*args, "--eval-every-steps", "3", "--cache-dir", str(root / "cache"), "--quiet"]) == 0
    return root / "run"


@pytest.mark.slow  # about 10 s of CPU: a tokenizer, packing, 6 steps
def test_pretrain_trains_a_decoder_preset_on_next_token_prediction(pretrained_decoder, capsys):
    final = json.loads((pretrained_decoder / "final.json").read_text())
    assert final["name"] == "UltraFastGPT-1x3" and final["step"] == 6
    config = json.loads((pretrained_decoder / "model" / "config.json").read_text())
    assert config["architectures"] == ["UltraFastGPTForCausalLM"] and config["max_position_embeddings"] == 32
    tokenizer = load_tokenizer(pretrained_decoder / "model")
    assert config["eos_token_id"] == tokenizer.sep_token_id  # every packed document ends with <sep>
    records = [json.loads(line) for line in (pretrained_decoder / "metrics.jsonl").read_text().splitlines()]
    evaluated = [record for record in records if "val_perplexity" in record]
    assert [record["step"] for record in evaluated] == [3, 6]
    assert all(record["val_perplexity"] == pytest.approx(math.exp(record["val_loss"])) for record in evaluated)
    assert evaluated[1]["val_loss"] < evaluated[0]["val_loss"]

    assert main(["generate", "--model", str(pretrained_decoder / "model"), "--max-new-tokens", "5", "the cat"]) == 0
    assert capsys.readouterr().out.startswith("the cat")

    root = pretrained_decoder.parent
    args = ["evaluate", "--model", str(pretrained_decoder / "model"), "--cache-dir", str(root / "cache")]
    assert main([*args, "--max-sequences", "64"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("corpus: ") and "corpus.txt" in printed[0]  # the one it was pretrained on
    assert printed[1].startswith("validation next-token loss ") and "perplexity" in printed[1]

    assert main(["inspect", *args[1:], "--max-sequences", "16"]) == 0
    tree_table = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"UltraFastGPT-1x3: tree health over \d+ tokens of \d+ validation sequences", tree_table[1])
    assert len(tree_table) == 3 + 4  # corpus, title, header, one row per layer


def test_an_unknown_preset_names_both_families(tmp_path):
    with pytest.raises(SystemExit) as refused:
        main(["pretrain", "--output", str(tmp_path / "run"), "--max-steps", "1", "--preset", "tiny-gpt-wide"])
    message = str(refused.value.code)
    assert "unknown model preset 'tiny-gpt-wide'; encoders (masked LM): crammed-bert" in message
    assert "causal decoders: tiny-gpt[-FF], gpt2-small[-FF]" in message and "\n" not in message
    assert not (tmp_path / "run").exists()
