"""``ultrafastbert fffify`` on tiny random BERTs built here: weights kept, distillation that works, folders that
load (with the package and without it), finetuning of the result, and every bad input refused before work."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    BertTokenizer,
)

import ultrafastbert  # noqa: F401  (registers the Auto classes)
from ultrafastbert.cli import main
from ultrafastbert.fffify.config import FffifyConfig
from ultrafastbert.fffify.job import RECORD, fffify_job
from ultrafastbert.fffify.source import FF_PARAMETER, ConversionError
from ultrafastbert.model.fffbert import FFFBertForMaskedLM, FFFBertModel

WORDS = (
    "the a cat dog bird fish runs walks swims flies fast slow red blue green small big old young tree house river "
    "on under near over and or but sees eats likes"
).split()
HIDDEN, FF_WIDTH = 32, 96


def write_texts(path: Path, documents: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) for _ in range(documents)]
    path.write_text("\n\n".join(lines) + "\n")  # blank lines separate documents
    return path


def tiny_bert(folder: Path, model_class: type = BertModel, **fields: object) -> torch.nn.Module:
    """A 2-layer BERT (hidden 32, FF 96) with random weights and a WordPiece tokenizer over ``WORDS``."""
    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocab)})
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=FF_WIDTH,
        **{"max_position_embeddings": 64, **fields},
    )
    model = model_class(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def quick(**fields: object) -> FffifyConfig:
    values = dict(
        depth=2,
        trees=2,
        layer_steps=150,
        batch_tokens=256,
        train_tokens=3000,
        heldout_tokens=800,
        heldout_sentences=40,
        init_tokens=2000,
        seq_len=24,
    )
    return FffifyConfig(**{**values, **fields})


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("fffify")
    dense = tiny_bert(root / "bert")
    texts = write_texts(root / "texts.txt", 600)
    config = quick(init="random", corpus=(str(texts),), e2e_steps=20, e2e_batch=8)
    record = fffify_job(root / "bert", root / "out", config, cache_dir=root / "cache", show_progress=False)
    return {"root": root, "dense": dense, "record": record, "texts": texts}


def test_every_weight_outside_the_feedforwards_is_the_originals_bit_for_bit(converted) -> None:
    dense, folder = converted["dense"], converted["root"] / "out"
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, FFFBertModel) and model.config.fff_trees == 2 and model.config.fff_depth == 2
    ours = model.state_dict()
    kept = {name: value for name, value in dense.state_dict().items() if not FF_PARAMETER.search(name)}
    assert len(kept) < len(dense.state_dict())  # the feedforwards were left out ...
    assert any(".attention.output.dense." in name for name in kept)  # ... and only they
    for name, value in kept.items():
        assert torch.equal(ours[name], value), name
    new = sorted(set(ours) - set(kept))
    assert new == sorted(
        f"encoder.layer.{i}.{suffix}"
        for i in range(2)
        for suffix in (
            "intermediate.fff.linear_in.weight",
            "intermediate.fff.linear_in.bias",
            "intermediate.fff.linear_out.weight",
            "output.bias",
        )
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the original tokenizer, file for file
        assert (folder / name).read_bytes() == (converted["root"] / "bert" / name).read_bytes()


def test_distillation_lowers_the_feedforward_error_well_below_the_initialisations(converted) -> None:
    for layer in converted["record"]["layers"]:
        error_before, error_after = 1 - layer["r2_init_heldout"], 1 - layer["r2_heldout"]
        assert error_after < 0.5 * error_before, layer  # held-out: not memorised
        assert layer["steps"] == 150
    end_to_end = converted["record"]["end_to_end"]
    assert end_to_end["steps"] == 20 and end_to_end["last_loss"] < end_to_end["first_loss"]


def test_data_driven_routing_starts_closer_than_random_initialisation(tmp_path: Path) -> None:
    tiny_bert(tmp_path / "bert")
    texts = write_texts(tmp_path / "texts.txt", 600)
    start = {}
    for init in ("random", "pca", "split"):
        record = fffify_job(
            tmp_path / "bert",
            tmp_path / init,
            quick(init=init, layer_steps=1, corpus=(str(texts),)),
            cache_dir=tmp_path / "cache",
            show_progress=False,
        )
        start[init] = [layer["r2_init_heldout"] for layer in record["layers"]]
    for layer in range(2):
        assert start["split"][layer] > start["random"][layer] + 0.2, start
        assert start["pca"][layer] > start["random"][layer] + 0.2, start


def test_the_folder_round_trips_with_identical_outputs_through_the_auto_class(converted, tmp_path: Path) -> None:
    folder = converted["root"] / "out"
    model = AutoModel.from_pretrained(folder).eval()
    ids = torch.randint(5, len(WORDS) + 5, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    model.save_pretrained(tmp_path / "again")
    again = AutoModel.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=mask).last_hidden_state
        second = again(input_ids=ids, attention_mask=mask).last_hidden_state
        kernel = model.encoder.layer[0].intermediate.fff.resolve_impl(first[0])
    assert torch.equal(first, second)
    assert kernel in ("kernel", "walk")  # the compiled kernel where it builds (the default), else the PyTorch walk
    record = json.loads((folder / RECORD).read_text())
    assert record["shape"] == "2x2" and record["embedding"]["sentences"] == record["text"]["heldout_sentences"] > 10


@pytest.mark.slow
def test_the_folder_loads_through_its_auto_map_without_the_package(converted, tmp_path: Path) -> None:
    folder = converted["root"] / "out"
    ids = torch.randint(5, len(WORDS) + 5, (2, 9), generator=torch.Generator().manual_seed(2))
    script = (
        "import json, sys\n"
        "sys.modules['ultrafastbert'] = None\n"
        "import torch\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "with torch.no_grad():\n"
        "    out = model(input_ids=torch.tensor(json.loads(sys.argv[2]))).last_hidden_state\n"
        "print(json.dumps({'module': type(model).__module__, 'out': out.tolist()}))\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    (tmp_path / "cwd").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), json.dumps(ids.tolist())],
        cwd=tmp_path / "cwd",
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["module"].startswith("transformers_modules.") and found["module"].endswith("modeling_fffbert")
    with torch.no_grad():
        expected = AutoModel.from_pretrained(folder).eval()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(torch.tensor(found["out"]), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_class", [BertForMaskedLM, BertForSequenceClassification])
def test_masked_lm_and_classifier_layouts_keep_their_heads(model_class: type, tmp_path: Path) -> None:
    dense = tiny_bert(tmp_path / "bert", model_class)
    texts = write_texts(tmp_path / "texts.txt", 300)
    fffify_job(
        tmp_path / "bert",
        tmp_path / "out",
        quick(layer_steps=5, corpus=(str(texts),)),
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
    auto = AutoModelForMaskedLM if model_class is BertForMaskedLM else AutoModelForSequenceClassification
    model = auto.from_pretrained(tmp_path / "out").eval()
    assert type(model).__name__ == "FFF" + model_class.__name__
    heads = {name: value for name, value in dense.state_dict().items() if name.startswith(("cls.", "classifier."))}
    assert heads
    for name, value in heads.items():
        assert torch.equal(model.state_dict()[name], value), name
    if isinstance(model, FFFBertForMaskedLM):  # the decoder stays tied to the (original) word embedding
        assert (
            model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
        )


def test_the_finetune_command_accepts_a_converted_model(converted, tmp_path: Path, capsys) -> None:
    rng = random.Random(0)
    rows = ["text,label"]
    for _ in range(80):
        animal = rng.choice(["cat", "dog"])
        rows.append(f"{' '.join(rng.choice(WORDS[4:]) for _ in range(5))} {animal},{animal}")
    for name in ("train", "valid"):
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    code = main(
        [
            "finetune",
            "--model",
            str(converted["root"] / "out"),
            "--train-file",
            str(tmp_path / "train.csv"),
            "--validation-file",
            str(tmp_path / "valid.csv"),
            "--output-dir",
            str(tmp_path / "ft"),
            "--seeds",
            "0",
            "--epochs",
            "10",
            "--lr",
            "3e-3",
            "--batch-size",
            "8",
            "--max-length",
            "16",
        ]
    )
    assert code == 0
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ft")
    assert type(model).__name__ == "FFFBertForSequenceClassification"
    assert set(model.config.id2label.values()) == {"cat", "dog"}
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    majority = max(sum(row.endswith(f",{animal}") for row in rows[1:]) for animal in ("cat", "dog")) / 80
    accuracy = results["tasks"][0]["median"]["validation"]["accuracy"]
    assert accuracy > 0.9 > majority + 0.3, (accuracy, majority)  # it learned the label, not the majority class


def bad_config(folder: Path, **changes: object) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("change", "flags", "message"),
    [
        ({"model_type": "roberta"}, [], "not a BERT-family model"),
        ({"architectures": ["BertForPreTraining"]}, [], "the converter supports BertModel"),
        ({"hidden_act": "relu"}, [], "hidden_act='relu'"),
        ({"is_decoder": True}, [], "decoder layout"),
        ({}, ["--depth", "9"], "choose depth <= 7"),
        ({}, ["--depth", "40"], "over a million"),
        ({}, ["--trees", "0"], "--trees"),
        ({}, ["--init", "kmeans"], "--init"),
        ({}, ["--seq-len", "1"], "seq_len must be >= 3"),
        ({}, ["--depth", "2", "--seq-len", "65"], "--seq-len 65 exceeds the model's max_position_embeddings=64"),
    ],
    ids=[
        "not-bert",
        "layout",
        "activation",
        "decoder",
        "deep-tree",
        "absurd-depth",
        "no-trees",
        "unknown-init",
        "one-token",
        "beyond-positions",
    ],
)
def test_bad_input_is_one_line_before_any_work(change, flags, message, tmp_path: Path, capsys) -> None:
    tiny_bert(tmp_path / "bert", BertForPreTraining if change.get("architectures") else BertModel)
    bad_config(tmp_path / "bert", **change)
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "fffify",
                "--model",
                str(tmp_path / "bert"),
                "--output",
                str(tmp_path / "out"),
                "--corpus",
                str(tmp_path / "missing.txt"),
                *flags,
            ]
        )
    if stop.value.code == 2:  # an argparse error: usage, then the one line that says what is wrong
        error = capsys.readouterr().err.strip().splitlines()[-1]
    else:
        error = str(stop.value)
        assert "\n" not in error.strip()
    assert message in error, error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bert"]  # nothing written


def test_a_non_empty_output_folder_needs_overwrite_and_the_input_folder_is_refused(tmp_path: Path) -> None:
    tiny_bert(tmp_path / "bert")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    args = ["fffify", "--model", str(tmp_path / "bert"), "--depth", "2", "--corpus", str(tmp_path / "missing.txt")]
    with pytest.raises(SystemExit, match="not empty"):
        main([*args, "--output", str(tmp_path / "out")])
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match="input model's folder"):
        main([*args, "--output", str(tmp_path / "bert"), "--overwrite"])


def test_the_output_and_input_folders_may_not_hold_one_another(tmp_path: Path) -> None:
    tiny_bert(tmp_path / "bert")
    args = ["fffify", "--model", str(tmp_path / "bert"), "--depth", "2", "--corpus", str(tmp_path / "missing.txt")]
    with pytest.raises(SystemExit, match=r"--output \S+ lies inside the input model's folder"):
        main([*args, "--output", str(tmp_path / "bert" / "fff")])
    with pytest.raises(SystemExit, match=r"--output \S+ holds the input model"):
        main([*args, "--output", str(tmp_path), "--overwrite"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bert"]


def test_a_second_conversion_into_a_folder_in_use_is_refused_naming_the_holder(tmp_path: Path) -> None:
    from ultrafastbert.train.run_folder import RunFolderError, run_folder_lock

    tiny_bert(tmp_path / "bert")
    texts = write_texts(tmp_path / "texts.txt", 100)
    with run_folder_lock(tmp_path / "out"), pytest.raises(RunFolderError, match=rf"in use .* \(pid {os.getpid()}\)"):
        fffify_job(tmp_path / "bert", tmp_path / "out", quick(corpus=(str(texts),)), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_the_default_sequence_length_fits_a_model_with_few_positions(tmp_path: Path) -> None:
    tiny_bert(tmp_path / "bert", max_position_embeddings=16)
    texts = write_texts(tmp_path / "texts.txt", 200)
    config = quick(seq_len=None, layer_steps=2, corpus=(str(texts),), train_tokens=500, heldout_tokens=200)
    record = fffify_job(tmp_path / "bert", tmp_path / "out", config, cache_dir=tmp_path / "cache", show_progress=False)
    assert record["config"]["seq_len"] == 16


def test_a_source_holding_nan_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    from ultrafastbert.model import CheckpointError

    model = tiny_bert(tmp_path / "bert")
    with torch.no_grad():
        model.encoder.layer[1].attention.self.query.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "bert")
    texts = write_texts(tmp_path / "texts.txt", 100)
    with pytest.raises(CheckpointError, match=r"non-finite .*encoder\.layer\.1\.attention\.self\.query\.weight"):
        fffify_job(tmp_path / "bert", tmp_path / "out", quick(corpus=(str(texts),)), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_fill_mask_and_evaluate_open_a_converted_masked_lm(tmp_path: Path, capsys) -> None:
    tiny_bert(tmp_path / "bert", BertForMaskedLM)
    texts = write_texts(tmp_path / "texts.txt", 200)
    config = quick(layer_steps=2, corpus=(str(texts),), train_tokens=500, heldout_tokens=200)
    fffify_job(tmp_path / "bert", tmp_path / "out", config, cache_dir=tmp_path / "cache", show_progress=False)
    capsys.readouterr()
    assert main(["fill-mask", "--model", str(tmp_path / "out"), "--top-k", "2", "the [MASK] runs fast"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["mask 0", "1"], ["mask 0", "2"]]
    assert all(line.split("\t")[2] in WORDS + ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"] for line in lines)
    evaluate = ["evaluate", "--model", str(tmp_path / "out"), "--corpus", str(texts), "--seq-len", "32"]
    assert main([*evaluate, "--cache-dir", str(tmp_path / "cache"), "--max-sequences", "4"]) == 0
    loss = float(capsys.readouterr().out.split("validation MLM loss ")[1].split(",")[0])
    assert 0 < loss < 20
    with pytest.raises(SystemExit, match="not valid UTF-8"):
        main(["fill-mask", "--model", str(tmp_path / "out"), "the [MASK] \udcff runs"])


def test_a_crammedbert_folder_is_not_a_bert_to_convert(tmp_path: Path) -> None:
    from model_helpers import tiny_pretrained

    tiny_pretrained(tmp_path / "crammed", WORDS)
    with pytest.raises(ConversionError, match="'crammedBERT' model, not a BERT-family model"):
        fffify_job(tmp_path / "crammed", tmp_path / "out", quick(corpus=(str(tmp_path / "missing.txt"),)))
    assert not (tmp_path / "out").exists()


def test_a_corrupt_weights_file_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    tiny_bert(tmp_path / "bert")
    weights = tmp_path / "bert" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    texts = write_texts(tmp_path / "texts.txt", 100)
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "fffify",
                "--model",
                str(tmp_path / "bert"),
                "--depth",
                "2",
                "--output",
                str(tmp_path / "out"),
                "--corpus",
                str(texts),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
    assert "corrupt weights file" in str(stop.value) and "\n" not in str(stop.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bert", "cache", "texts.txt"]


def test_a_converted_folder_missing_a_tree_weight_is_refused_naming_it(converted, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from ultrafastbert.model import CheckpointError

    folder = tmp_path / "broken"
    shutil.copytree(converted["root"] / "out", folder)
    weights = load_file(folder / "model.safetensors")
    del weights["encoder.layer.1.intermediate.fff.linear_out.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing \(1\): encoder\.layer\.1\.intermediate\.fff\.linear_out"):
        AutoModel.from_pretrained(folder)
    AutoModelForSequenceClassification.from_pretrained(converted["root"] / "out", num_labels=2)  # a new head is fine


def load_report_script():
    """``benchmarks/fffify.py`` (a script, not a package module) as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fffify.py"
    spec = importlib.util.spec_from_file_location("fffify_report_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_baselines_fit_a_model_with_fewer_positions_than_128(tmp_path: Path) -> None:
    tiny_bert(tmp_path / "bert")  # 64 positions; the texts below are longer than that
    rng = random.Random(0)
    documents = [" ".join(rng.choice(WORDS) for _ in range(150)) for _ in range(60)]
    (tmp_path / "texts.txt").write_text("\n\n".join(documents) + "\n")
    script = load_report_script()
    config = quick(seq_len=None, layer_steps=2, corpus=(str(tmp_path / "texts.txt"),), heldout_sentences=12)
    script.baselines(tmp_path / "report", tmp_path / "bert", config, cache_dir=tmp_path / "cache")
    result = json.loads((tmp_path / "report" / "baselines.json").read_text())
    assert len(result["layers"]) == 2 and result["embedding"]["linear"]["sentences"] > 0
    assert script.timed_seq_len(tmp_path / "bert") == 64


def grouped(**fields: object) -> FffifyConfig:
    values = dict(method="grouped", depth=2, trees=1, active_fraction=0.5, train_tokens=3000, heldout_tokens=800)
    return quick(**{**values, **fields})


@pytest.fixture(scope="module")
def grouped_converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("grouped")
    dense = tiny_bert(root / "bert")
    texts = write_texts(root / "texts.txt", 600)
    config = grouped(corpus=(str(texts),))
    record = fffify_job(root / "bert", root / "out", config, cache_dir=root / "cache", show_progress=False)
    return {"root": root, "dense": dense, "record": record, "texts": texts}


def test_grouped_conversion_keeps_every_other_weight_and_every_neuron(grouped_converted) -> None:
    dense, folder = grouped_converted["dense"], grouped_converted["root"] / "out"
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, FFFBertModel) and model.config.fff_layer == "grouped"
    # 96 neurons, 4 leaves, half of them per token: a shared leaf of 32 and leaves of 16
    assert (model.config.fff_depth, model.config.fff_leaf_width, model.config.fff_shared_width) == (2, 16, 32)
    ours = model.state_dict()
    for name, value in dense.state_dict().items():
        if not FF_PARAMETER.search(name):
            assert torch.equal(ours[name], value), name
    for index, block in enumerate(dense.encoder.layer):  # every dense neuron exactly once, weights copied
        layer = model.encoder.layer[index].intermediate.fff
        neurons = torch.cat(
            [
                torch.cat([block.intermediate.dense.weight, block.intermediate.dense.bias[:, None]], 1),
                block.output.dense.weight.T,
            ],
            1,
        )
        copies = torch.cat(
            [
                torch.cat([layer.shared_in_weight, layer.shared_in_bias[:, None], layer.shared_out_weight], 1),
                torch.cat([layer.leaf_in_weight, layer.leaf_in_bias[..., None], layer.leaf_out_weight], 2).flatten(
                    0, 1
                ),
            ]
        )
        assert copies.shape == neurons.shape
        assert torch.equal(copies[copies[:, 0].argsort()], neurons[neurons[:, 0].argsort()])
        assert torch.equal(model.encoder.layer[index].output.bias, block.output.dense.bias)
    record = grouped_converted["record"]
    assert record["shape"] == "g2x16+32" and record["neurons_per_token"] == 48
    assert record["grouped"]["active_fraction"] == 0.5
    for layer in record["layers"]:
        stats = layer["grouped"]
        assert stats["best_kept_mass"] >= stats["kept_mass"] > 0.5  # shared leaf alone holds a third of the neurons
        assert len(stats["router_accuracy"]) == 2 and min(stats["router_accuracy"]) > 0.5


def test_a_grouped_folder_round_trips_and_its_fast_path_equals_the_reference(grouped_converted, tmp_path) -> None:
    folder = grouped_converted["root"] / "out"
    model = AutoModel.from_pretrained(folder).eval()
    ids = torch.randint(5, len(WORDS) + 5, (3, 11), generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path / "again")
    again = AutoModel.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        first = model(input_ids=ids).last_hidden_state
        assert torch.equal(first, again(input_ids=ids).last_hidden_state)
        model.set_fff_impl("reference")
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, first)
    assert (folder / "fff_grouped.py").is_file()


def test_grouped_with_every_neuron_active_is_the_dense_model(tmp_path: Path) -> None:
    dense = tiny_bert(tmp_path / "bert")
    texts = write_texts(tmp_path / "texts.txt", 200)
    config = grouped(depth=0, active_fraction=1.0, corpus=(str(texts),))
    record = fffify_job(tmp_path / "bert", tmp_path / "out", config, cache_dir=tmp_path / "cache", show_progress=False)
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(5, len(WORDS) + 5, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, dense(input_ids=ids).last_hidden_state)
    assert record["embedding"]["cosine_mean"] > 0.9999


def test_grouped_recovery_distillation_closes_the_distance_moving_only_leaves_and_biases(
    grouped_converted, tmp_path: Path
) -> None:
    from ultrafastbert.fffify.distill import hidden_state_distance, tokenize

    root = grouped_converted["root"]
    config = grouped(corpus=(str(grouped_converted["texts"]),), e2e_steps=40, e2e_batch=8)
    record = fffify_job(root / "bert", tmp_path / "out", config, cache_dir=root / "cache", show_progress=False)
    end_to_end = record["end_to_end"]
    assert end_to_end["steps"] == 40 and record["seconds"]["end_to_end"] > 0
    # held-out texts, not the ones distilled on: the converted model came closer to the dense one there
    assert end_to_end["heldout_distance_after"] < 0.8 * end_to_end["heldout_distance_before"], end_to_end
    ours = AutoModel.from_pretrained(tmp_path / "out").state_dict()
    before = AutoModel.from_pretrained(root / "out").state_dict()  # the same conversion without the stage
    for name, value in grouped_converted["dense"].state_dict().items():
        if not FF_PARAMETER.search(name):
            assert torch.equal(ours[name], value), name
    for name, value in before.items():
        if ".intermediate.fff.router_" in name:  # hard routing passes no gradient: the fitted routing is kept
            assert torch.equal(ours[name], value), name
        elif ".intermediate.fff." in name or name.endswith(".output.bias"):
            assert not torch.equal(ours[name], value), name  # the leaves, shared leaf and biases were trained
        else:
            assert torch.equal(ours[name], value), name
    tokenizer = BertTokenizer.from_pretrained(root / "bert")
    texts = grouped_converted["texts"].read_text().split("\n\n")[:20]
    dense = grouped_converted["dense"]
    assert hidden_state_distance(dense, dense, tokenize(tokenizer, texts, 24)) == 0.0


@pytest.mark.slow
def test_a_grouped_folder_loads_without_the_package(grouped_converted, tmp_path: Path) -> None:
    folder = grouped_converted["root"] / "out"
    ids = torch.randint(5, len(WORDS) + 5, (2, 9), generator=torch.Generator().manual_seed(2))
    script = (
        "import json, sys\n"
        "sys.modules['ultrafastbert'] = None\n"
        "import torch\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "with torch.no_grad():\n"
        "    out = model(input_ids=torch.tensor(json.loads(sys.argv[2]))).last_hidden_state\n"
        "layer = type(model.encoder.layer[0].intermediate.fff)\n"
        "print(json.dumps({'layer': layer.__module__ + '.' + layer.__name__, 'out': out.tolist()}))\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    (tmp_path / "cwd").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), json.dumps(ids.tolist())],
        cwd=tmp_path / "cwd",
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["layer"].startswith("transformers_modules.") and found["layer"].endswith("fff_grouped.GroupedFFF")
    with torch.no_grad():
        expected = AutoModel.from_pretrained(folder).eval()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(torch.tensor(found["out"]), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--active-fraction", "0"], r"active fraction must lie in \(0, 1\], got 0"),
        (["--active-fraction", "1.5"], r"active fraction must lie in \(0, 1\], got 1.5"),
        (["--depth", "7"], r"depth 7 makes 128 leaves, more than the 96 neurons of the dense feedforward"),
        (["--depth", "1", "--active-fraction", "0.3"], r"below 1/2, .* choose depth >= 2"),
        (["--depth", "0", "--active-fraction", "0.5"], r"depth 0 routes nothing"),
        (["--depth", "6", "--active-fraction", "0.9"], r"leaves fewer neurons than leaves"),
        (["--trees", "2"], r"--trees must be 1, got 2"),
        (["--method", "moe"], r"invalid choice: 'moe'"),
    ],
)
def test_bad_grouped_settings_are_one_line_before_any_work(flags, message, tmp_path: Path, capsys) -> None:
    tiny_bert(tmp_path / "bert")
    arguments = ["fffify", "--model", str(tmp_path / "bert"), "--output", str(tmp_path / "out"), "--method", "grouped"]
    arguments += ["--corpus", str(tmp_path / "missing.txt"), "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as stop:
        main([*arguments, *flags])
    text = str(stop.value) if stop.value.code != 2 else capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, text) and "\n" not in text, text
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bert"]


def test_grouped_shapes_keep_every_neuron() -> None:
    from ultrafastbert.fffify.grouped import grouped_shape

    expected = [(1, 0.5, 768, 0), (2, 0.25, 384, 0), (2, 0.375, 320, 256), (3, 0.25, 164, 224)]
    for depth, fraction, leaf, shared in expected:
        shape = grouped_shape(1536, depth, fraction)
        assert (shape.leaf_width, shape.shared_width) == (leaf, shared), shape
        assert shape.shared_width + 2**depth * shape.leaf_width == 1536
        assert abs(shape.active_fraction - fraction) < 0.01


def test_conversions_sharing_one_pass_of_the_dense_model_match_a_lone_conversion(tmp_path: Path) -> None:
    from ultrafastbert.fffify.job import prepare_conversion

    tiny_bert(tmp_path / "bert")
    texts = write_texts(tmp_path / "texts.txt", 300)
    config = grouped(corpus=(str(texts),), train_tokens=1500, heldout_tokens=400, heldout_sentences=20)
    data = prepare_conversion(tmp_path / "bert", config, cache_dir=tmp_path / "cache")
    shared = fffify_job(tmp_path / "bert", tmp_path / "a", config, cache_dir=tmp_path / "cache", data=data)
    alone = fffify_job(tmp_path / "bert", tmp_path / "b", config, cache_dir=tmp_path / "cache")
    assert [layer["r2_heldout"] for layer in shared["layers"]] == [layer["r2_heldout"] for layer in alone["layers"]]
    assert shared["embedding"] == alone["embedding"]
    with pytest.raises(ValueError, match="shared conversion data was made from"):
        fffify_job(tmp_path / "bert", tmp_path / "c", quick(**{**vars(config), "train_tokens": 1000}), data=data)
    assert not (tmp_path / "c").exists()


def test_the_longer_finetuning_comparison_waits_for_every_run_and_scores_against_both_dense_recipes(
    tmp_path: Path, monkeypatch
) -> None:
    script = load_report_script()
    monkeypatch.setattr(script, "load_task", lambda *args: None)
    monkeypatch.setattr(script, "majority_baseline", lambda *args: 0.5)  # every task's majority class: 50

    def write(runs: str, name: str, task_scores: dict[str, list[float]]) -> None:
        for task, values in task_scores.items():
            for seed, value in zip(script.FINETUNE.seeds, values, strict=True):
                path = tmp_path / runs / name / task / f"seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"metrics": {script.SCORE_SPLIT: {"accuracy": value}}}))

    tasks = script.TASKS
    write("finetune", script.DENSE, {task: [0.89, 0.90, 0.91] for task in tasks})  # gain 0.40 above majority
    write(script.LONGER, script.DENSE, {task: [0.69, 0.70, 0.71] for task in tasks})  # gain 0.20
    converted = script.LONGER_FINETUNED[0]
    write(script.LONGER, converted, {task: [0.60, 0.60, 0.60] for task in tasks[:-1]})  # one task missing
    assert script.longer_comparison(tmp_path) == []

    write(script.LONGER, converted, {task: [0.60, 0.60, 0.60] for task in tasks})  # gain 0.10
    lines = script.longer_comparison(tmp_path)
    row = next(line for line in lines if line.startswith(f"| {converted} |"))
    # half the longer-recipe dense gain, a quarter of the standard recipe's
    assert "| 50.0% (" in row and row.endswith("| 25.0% |")
