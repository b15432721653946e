"""The UltraFastGPT causal decoder (``model/ultrafastgpt/``): generation against a step-by-step forward, the KV cache
against a forward without it, the FFF paths against the reference, saving and loading (also without the package),
presets and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, StaticCache, pipeline

from ultrafastbert.data.tokenizer import train_tokenizer
from ultrafastbert.fff import FFF
from ultrafastbert.fff.balance import take_routing_loss
from ultrafastbert.model import (
    CheckpointError,
    UltraFastGPTConfig,
    UltraFastGPTForCausalLM,
    UltraFastGPTModel,
    load_tokenizer,
)
from ultrafastbert.model.ultrafastgpt.modeling import DECODER_AUTO_MAP, DECODER_FILE, decoder_preset_fields

VOCAB = 97
CONTEXT = 40
TOLERANCE = 1e-5  # float32 logits of O(1) size: two correct summation orders
FEEDFORWARDS = {  # name -> config fields
    "dense": {"ffn_type": "dense", "intermediate_size": 24},
    "fff": {"ffn_type": "fff", "fff_trees": 2, "fff_depth": 3},
    "no-ff": {"ffn_type": "none"},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_decoder(feedforward: str = "fff", seed: int = 0, **fields: object) -> UltraFastGPTForCausalLM:
    """A tiny decoder with O(1) random weights, biases and norms included (the N(0, 0.02) init makes every logit
    nearly equal, and argmax a coin toss between near-ties)."""
    sizes = {"vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = UltraFastGPTConfig(
        **{**sizes, "max_position_embeddings": CONTEXT, "eos_token_id": None, **FEEDFORWARDS[feedforward], **fields}
    )
    torch.manual_seed(seed)
    model = UltraFastGPTForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    return model.eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def stepwise_greedy(model: UltraFastGPTForCausalLM, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding the slow way: the whole sequence through the model for every token, no cache."""
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


# --- generation and the KV cache -----------------------------------------------------------------------------


@pytest.mark.parametrize("feedforward", FEEDFORWARDS)
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_generate_equals_a_stepwise_forward_without_cache(feedforward: str, batch: int) -> None:
    model = random_decoder(feedforward)
    prompt = random_ids(batch, 6)
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert generated.shape == (batch, 18)
    assert torch.equal(generated, stepwise_greedy(model, prompt, 12))


@pytest.mark.parametrize("feedforward", FEEDFORWARDS)
@pytest.mark.parametrize("cache_class", [DynamicCache, StaticCache])
def test_logits_with_the_cache_equal_logits_without_it(feedforward: str, cache_class: type) -> None:
    """A prompt, then one token at a time, then several at once (the causal band over cached keys); a static cache
    preallocates more keys than are written, which the band masks."""
    model = random_decoder(feedforward, seed=2)
    ids = random_ids(2, 15, seed=3)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = DynamicCache(config=model.config) if cache_class is DynamicCache else StaticCache(model.config, 21)
        pieces = [model(ids[:, a:b], past_key_values=cache).logits for a, b in ((0, 7), (7, 8), (8, 9), (9, 15))]
    assert cache.get_seq_length() == 15
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=TOLERANCE, rtol=0)


def test_generate_feeds_one_token_per_step_through_the_cache() -> None:
    model = random_decoder("dense")
    lengths = []
    hook = model.model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(args[0].shape[1]), with_kwargs=True
    )
    model.generate(random_ids(1, 5), max_new_tokens=4, do_sample=False)
    hook.remove()
    assert lengths == [5, 1, 1, 1]


def test_a_left_padded_row_computes_what_the_unpadded_prompt_computes() -> None:
    """``generate`` on a padded batch passes the mask and positions counted over the tokens: the short row's logits
    are those of its prompt alone, and so is its greedy continuation."""
    model = random_decoder("fff", seed=4)
    long, short = random_ids(1, 8, seed=5), random_ids(1, 3, seed=6)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 5, dtype=torch.long), short], dim=1)])
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :5] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(ids, attention_mask=attention_mask, position_ids=position_ids).logits[1, 5:]
        alone = model(short).logits[0]
    torch.testing.assert_close(padded, alone, atol=TOLERANCE, rtol=0)
    generated = model.generate(ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated[1, 5:], model.generate(short, max_new_tokens=6, do_sample=False)[0])
    static = model.generate(
        ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False, cache_implementation="static"
    )
    assert torch.equal(static, generated)  # generate hands a static cache a 4-D mask, used as it is


def test_sampling_with_a_seed_is_reproducible_and_top_k_1_is_greedy() -> None:
    model = random_decoder("fff")
    prompt = random_ids(2, 4)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9, temperature=1.3))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (2, 14)
    assert int(runs[0].min()) >= 0 and int(runs[0].max()) < VOCAB
    greedy = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=1), greedy)


def test_beam_search_through_the_cache_equals_beam_search_without_it() -> None:
    """The cache is reordered as beams are chosen: what is computed must not depend on it."""
    model = random_decoder("fff", seed=11)
    prompt = random_ids(2, 5, seed=12)
    cached = model.generate(prompt, max_new_tokens=8, num_beams=3, do_sample=False)
    assert cached.shape == (2, 13)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=8, num_beams=3, do_sample=False, use_cache=False))


def test_the_text_generation_pipeline_continues_the_prompt(tmp_path: Path) -> None:
    texts = ["the quick brown fox jumps over the lazy dog .", "a small tree routes every token to one leaf ."] * 10
    train_tokenizer(texts, vocab_size=VOCAB, output_dir=tmp_path / "tokenizer", model_max_length=CONTEXT)
    tokenizer = load_tokenizer(tmp_path / "tokenizer")
    model = random_decoder("fff", vocab_size=len(tokenizer))
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
    # The corpus tokenizer's template appends <sep> to a single text (the encoders' format): a prompt goes without.
    results = generate(["the quick fox", "a tree"], max_new_tokens=5, do_sample=False, add_special_tokens=False)
    for prompt, [result] in zip(["the quick fox", "a tree"], results, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        expected = stepwise_greedy(model, prompt_ids, 5)[0, prompt_ids.shape[1] :]
        assert result["generated_text"] == prompt + tokenizer.decode(expected, skip_special_tokens=True)


# --- the FFF paths, training ---------------------------------------------------------------------------------


def routing_margin(model: UltraFastGPTForCausalLM, ids: torch.Tensor) -> float:
    """The smallest |routing logit| over its summation scale (sum of |terms|) of every FFF decision the model takes
    on ``ids``, in float64: above 1e-5 (the allowance of ``fff_helpers.paths_agree_or_tie``), every correct path
    routes every token alike on any CPU."""
    inputs: list[tuple[FFF, torch.Tensor]] = []
    hooks = [
        module.register_forward_pre_hook(lambda layer, args: inputs.append((layer, args[0])))
        for module in model.modules()
        if isinstance(module, FFF)
    ]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    margins = []
    for layer, x in inputs:
        with torch.no_grad():
            flat, weight = x.reshape(-1, layer.width).double(), layer.linear_in.weight.double()
            bias = layer.linear_in.bias.double()
            logits = flat @ weight.T + bias
            scale = flat.abs() @ weight.abs().T + bias.abs()
            margins.append(float((logits.abs() / scale).min()))
    return min(margins)


@pytest.mark.parametrize("impl", ["auto", "walk", "sparse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_the_fff_decoder_logits_match_the_reference_path(impl: str, dtype: torch.dtype) -> None:
    model = random_decoder("fff", seed=8, fff_trees=3, fff_depth=4).to(dtype)
    ids = random_ids(2, 11, seed=9)
    assert routing_margin(model, ids) > 1e-5, "the data has a near-tie; pick another seed"
    model.set_fff_impl("reference")
    with torch.no_grad():
        reference = model(ids).logits.float()
    model.set_fff_impl(impl)
    assert model.config.fff_impl == impl and all(m.impl == impl for m in model.modules() if isinstance(m, FFF))
    tolerance = TOLERANCE if dtype == torch.float32 else 2e-2 * float(reference.abs().max())  # bfloat16: 8 bits
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits.float(), reference, atol=tolerance, rtol=0)


def test_the_loss_is_the_shifted_cross_entropy_and_trains_every_feedforward() -> None:
    model = random_decoder("fff", fff_balance_loss=0.1).train()
    ids = random_ids(2, 9)
    labels = ids.clone()
    labels[0, 4] = -100
    output = model(ids, labels=labels)
    assert output.past_key_values is None  # training forwards make no cache unless asked
    expected = torch.nn.functional.cross_entropy(
        output.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(output.loss, expected)
    (output.loss + take_routing_loss(model)).backward()
    for layer in model.model.layers:
        assert layer.ffn.linear_in.weight.grad.abs().sum() > 0 and layer.ffn.linear_out.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        model = random_decoder("dense").train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(random_ids(2, 9), labels=random_ids(2, 9)).loss.backward()
        grads.append(model.model.layers[0].ffn.dense_in.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


# --- presets, Auto classes, saving and loading ---------------------------------------------------------------


def test_presets_name_the_sizes_and_feedforwards() -> None:
    small = UltraFastGPTConfig.from_preset("gpt2-small")
    sizes = (small.num_hidden_layers, small.hidden_size, small.num_attention_heads, small.max_position_embeddings)
    assert sizes == (12, 768, 12, 1024) and small.ffn_type == "dense" and small.intermediate_size == 3072
    tree = UltraFastGPTConfig.from_preset("gpt2-small-fff")
    assert (tree.ffn_type, tree.fff_trees, tree.fff_depth, tree.ff_neurons_per_token) == ("fff", 1, 11, 12)
    assert UltraFastGPTConfig.from_preset("gpt2-small-narrow").intermediate_size == 12
    assert UltraFastGPTConfig.from_preset("gpt2-small-no-ff").ff_neurons_per_token == 0
    tiny = UltraFastGPTConfig.from_preset("tiny-gpt-fff-2x5", vocab_size=300)
    assert (tiny.hidden_size, tiny.fff_trees, tiny.fff_depth, tiny.vocab_size) == (128, 2, 5, 300)
    assert decoder_preset_fields("tiny-gpt-dense-64")["intermediate_size"] == 64
    assert tiny.name == "UltraFastGPT-2x5" and small.name == "GPT-dense-3072"


def test_the_auto_classes_build_and_load_the_family(tmp_path: Path) -> None:
    config = AutoConfig.for_model("ultrafastgpt", vocab_size=VOCAB, hidden_size=16, num_attention_heads=2)
    assert type(config) is UltraFastGPTConfig
    model = random_decoder("fff")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == DECODER_AUTO_MAP
    assert (tmp_path / f"{DECODER_FILE}.py").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is UltraFastGPTForCausalLM
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embeddings.embed_tokens.weight.data_ptr()
    ids = random_ids(2, 7)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert torch.equal(loaded.generate(ids, max_new_tokens=5), model.generate(ids, max_new_tokens=5))
    assert type(UltraFastGPTModel.from_pretrained(tmp_path)) is UltraFastGPTModel  # the head's weight is left out


def test_a_checkpoint_of_another_feedforward_is_refused_by_name(tmp_path: Path) -> None:
    random_decoder("dense").save_pretrained(tmp_path)
    config = UltraFastGPTConfig.from_pretrained(tmp_path, ffn_type="fff")
    with pytest.raises(CheckpointError, match=r"missing .*ffn\.linear_in\.weight"):
        UltraFastGPTForCausalLM.from_pretrained(tmp_path, config=config)


# Run in a fresh process where `import ultrafastbert` fails; argv[1]: the folder, argv[2]: the prompt ids (JSON).
_SCRIPT = """
import json, sys
sys.modules["ultrafastbert"] = None
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
generated = model.generate(ids, max_new_tokens=8, do_sample=False)
imported = sorted(name for name in sys.modules if name.startswith("ultrafastbert") and sys.modules[name])
print("\\n" + json.dumps({"logits": logits.tolist(), "generated": generated.tolist(), "module": type(model).__module__,
                          "ffn": type(model.model.layers[0].ffn).__module__, "imported": imported}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("feedforward", ["dense", "fff"])
def test_a_saved_folder_loads_and_generates_without_the_package(tmp_path: Path, feedforward: str) -> None:
    model = random_decoder(feedforward, seed=10)
    model.save_pretrained(tmp_path / "model")
    ids = random_ids(2, 6)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    (tmp_path / "cwd").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "model"), json.dumps(ids.tolist())],
        cwd=tmp_path / "cwd",
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["imported"] == [] and found["module"].startswith("transformers_modules.")
    assert found["module"].endswith(DECODER_FILE)
    if feedforward == "fff":  # the folder's own pure-PyTorch copy of the layer
        assert found["ffn"].endswith(".fff_layer") and found["ffn"].startswith("transformers_modules.")
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(found["logits"]), model(ids).logits, atol=TOLERANCE, rtol=0)
    assert found["generated"] == model.generate(ids, max_new_tokens=8, do_sample=False).tolist()


# --- bad input: one line naming the problem, before any work -------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m(torch.tensor([[1, VOCAB]])), rf"input_ids must lie in \[0, {VOCAB}\)"),
        (lambda m: m(torch.tensor([[-1, 2]])), "input_ids must lie in"),
        (lambda m: m(torch.ones(1, CONTEXT + 1, dtype=torch.long)), f"exceed the model's context of {CONTEXT}"),
        (lambda m: m(torch.ones(1, 0, dtype=torch.long)), "input_ids is empty"),
        (lambda m: m(torch.ones(3, dtype=torch.long)), r"must be a \(batch, sequence\) tensor"),
        (lambda m: m(torch.ones(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4)), "attention_mask must"),
        (lambda m: m(torch.ones(1, 3, dtype=torch.long), output_attentions=True), "output_attentions"),
        (
            lambda m: m.generate(torch.ones(1, CONTEXT - 2, dtype=torch.long), max_new_tokens=5),
            "ask for at most 2 new tokens",
        ),
        (lambda m: m.generate(torch.ones(1, CONTEXT + 3, dtype=torch.long), max_new_tokens=1), "the prompt has"),
        (lambda m: m.generate(torch.ones(1, 0, dtype=torch.long), max_new_tokens=3), "input_ids is empty"),
        (lambda m: m.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=0), "max_new_tokens"),
        (lambda m: m.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=-2), "max_new_tokens"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(call, message: str) -> None:
    model = random_decoder("dense")
    with pytest.raises((ValueError, TypeError), match=message) as error:
        call(model)
    assert "\n" not in str(error.value)


def test_bad_configs_and_presets_are_one_line() -> None:
    for make, message in [
        (lambda: UltraFastGPTConfig.from_preset("gpt9"), "unknown decoder preset 'gpt9'; known: tiny-gpt"),
        (lambda: UltraFastGPTConfig.from_preset("gpt2-small-fff-3"), "unknown decoder preset"),
        (lambda: UltraFastGPTConfig(hidden_size=30, num_attention_heads=4), "divisible"),
        (lambda: UltraFastGPTConfig(ffn_type="fff", fff_depth=99), "fff_depth"),
        (lambda: UltraFastGPTConfig(fff_impl="fast"), "unknown fff_impl"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            make()
        assert "\n" not in str(error.value)
