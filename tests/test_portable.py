"""Saved model folders carry their model code (``model/portable.py``): in a fresh process that cannot import
``ultrafastbert``, the Auto classes and pipelines load them with ``trust_remote_code=True`` and compute what the
package computes; where the package is installed, the folder's code uses the package's FFF layer. The code is
generated at development time into ``model/folder_code/`` (``make folder-code``), and saving copies it from there:
a test fails, naming the stale file, when it is out of date with the sources."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, pipeline
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

from ultrafastbert import (
    FFF,
    CrammedBertConfig,
    CrammedBertForMaskedLM,
    CrammedBertForSequenceClassification,
    CrammedBertTokenizer,
)
from ultrafastbert.data.tokenizer import train_tokenizer
from ultrafastbert.model import codegen, convert_checkpoint, load_tokenizer, portable
from ultrafastbert.model.base import FFFPreTrainedMixin
from ultrafastbert.model.crammedbert.configuration import AUTO_MAP, MODELING_FILE
from ultrafastbert.model.portable import (
    BASE_MODULE,
    FOLDER_CODE,
    KERNEL_STAND_IN,
    PACKAGE_ROOT,
    PortableCodeError,
    folder_files,
    model_code,
    stale_files,
    stale_message,
    write_folder_code,
)

TEXTS = [
    "the quick brown fox jumps over the lazy dog .",
    "a small model reads the text and fills the gap .",
    "every tree routes a token to one leaf , then the next layer reads it .",
    "dogs and foxes run over the hills in the morning .",
] * 10
MASKED = ["the quick brown <mask> jumps over the lazy dog .", "a small model reads the <mask> ."]
CLASSIFIED = ["the lazy dog runs over the hills .", "a token is routed to one leaf ."]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
MAX_LEN = 24
FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-5  # the folder's pure-PyTorch FFF paths against the package's kernel, fp32
MODELS = {  # folder -> (class, config fields): dense and FFF, masked LM and classifiers with named labels
    "mlm_dense": (CrammedBertForMaskedLM, {"ffn_type": "dense", "hidden_act": "gelu_glu"}),
    "mlm_fff": (CrammedBertForMaskedLM, {"ffn_type": "fff"}),
    "cls_dense": (CrammedBertForSequenceClassification, {"ffn_type": "dense", "classifier_pooling": "avg"}),
    "cls_fff": (CrammedBertForSequenceClassification, {"ffn_type": "fff"}),
}

# Run in a fresh process from an empty folder; argv[1]: the JSON of ``subprocess_inputs``. With "block", importing
# ultrafastbert fails as where it is not installed. Prints the outputs as JSON.
_SCRIPT = """
import json, sys
inputs = json.loads(sys.argv[1])
if inputs["block"]:
    sys.modules["ultrafastbert"] = None  # `import ultrafastbert` raises ImportError from here on
import torch
from transformers import (
    AutoModelForMaskedLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer, pipeline,
)

results = {}
input_ids, attention_mask = torch.tensor(inputs["input_ids"]), torch.tensor(inputs["attention_mask"])
for name, folder in inputs["folders"].items():
    masked_lm = name.startswith("mlm")
    auto = AutoModelForMaskedLM if masked_lm else AutoModelForSequenceClassification
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    ffn = model.encoder.layers[0].ffn
    with torch.no_grad():
        logits = model(input_ids, attention_mask).logits
        path = ffn.resolve_impl(torch.zeros(1, ffn.width)) if hasattr(ffn, "resolve_impl") else None
    if masked_lm:
        outputs = pipeline("fill-mask", model=folder, trust_remote_code=True)(inputs["masked"], top_k=5)
    else:
        classify = pipeline("text-classification", model=folder, trust_remote_code=True)
        outputs = classify(inputs["classified"], top_k=None)
    results[name] = {
        "logits": logits.tolist(), "pipeline": outputs, "model_module": type(model).__module__,
        "ffn_module": type(ffn).__module__, "ffn_path": path,
    }
    if name == "mlm_fff":  # saved again from the folder's own code (transformers copies the files), and reloaded
        model.save_pretrained(inputs["resaved"])
        again = AutoModelForMaskedLM.from_pretrained(inputs["resaved"], trust_remote_code=True).eval()
        with torch.no_grad():
            results["resaved_logits"] = again(input_ids, attention_mask).logits.tolist()
folder = inputs["folders"]["mlm_fff"]  # BERT's arguments, the question-answering head and ONNX export
model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    outputs = model(input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids),
                    return_dict=False, output_attentions=True)
results["bert_arguments"] = {"logits": outputs[0].tolist(), "attentions": [list(a.shape) for a in outputs[1]]}
results["qa_class"] = type(AutoModelForQuestionAnswering.from_pretrained(folder, trust_remote_code=True)).__name__
if inputs["block"]:  # the folder's own copy of the FFF layer exports
    import onnxruntime
    program = torch.onnx.export(model, (input_ids, attention_mask), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    results["onnx_logits"] = session.run(None, feeds)[0].tolist()
for name in ("mlm_dense", "mlm_fff"):  # without trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(inputs["folders"][name])
    results[f"tokenized_{name}"] = tokenizer(inputs["masked"] + inputs["classified"])["input_ids"]
results["imported"] = sorted(name for name in sys.modules if name.startswith("ultrafastbert") and sys.modules[name])
print("\\n" + json.dumps(results))  # on a line of its own: transformers' question about the code precedes it
"""


def random_model(model_class: type, vocab_size: int, seed: int, **fields: object) -> torch.nn.Module:
    """A tiny model with O(1) random weights, biases and norms included (the N(0, 0.02) init, zero biases and unit
    norms would make every output nearly equal)."""
    config = CrammedBertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        fff_trees=2,
        fff_depth=2,
        intermediate_size=24,
        classifier_hidden_size=20,
        embedding_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        id2label=LABELS,
        label2id={label: index for index, label in LABELS.items()},
        **fields,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("scale_factor"):
                param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Each model of ``MODELS`` saved with its tokenizer, as a training run saves them: every other one with the
    run's tokenizer (read back from its cache), the others with this package's tokenizer class."""
    root = tmp_path_factory.mktemp("portable")
    with pytest.warns(UserWarning, match="yields only"):  # a tiny corpus cannot fill 500 tokens
        train_tokenizer(TEXTS, vocab_size=500, output_dir=root / "tokenizer", model_max_length=MAX_LEN)
    tokenizers = [load_tokenizer(root / "tokenizer"), CrammedBertTokenizer.from_pretrained(root / "tokenizer")]
    folders = {}
    for seed, (name, (model_class, fields)) in enumerate(MODELS.items()):
        tokenizer = tokenizers[seed % 2]
        model = random_model(model_class, len(tokenizer), seed, **fields)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders[name] = (root / name, model)
    return folders


def batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (3, 10), generator=generator)
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[1, -3:] = 0
    return input_ids, attention_mask


# --- what is written ------------------------------------------------------------------------------------------


def test_the_auto_map_names_classes_of_files_in_the_folder(saved) -> None:
    assert AUTO_MAP["AutoModelForSequenceClassification"] == "modeling_crammedbert.CrammedBertForSequenceClassification"
    for folder, _ in saved.values():
        assert json.loads((folder / "config.json").read_text())["auto_map"] == AUTO_MAP
        for reference in AUTO_MAP.values():
            file, class_name = reference.split(".")
            tree = ast.parse((folder / f"{file}.py").read_text())
            assert class_name in {node.name for node in tree.body if isinstance(node, ast.ClassDef)}, reference


def test_a_converted_original_checkpoint_carries_the_code_too(tmp_path: Path) -> None:
    folder = convert_checkpoint(FIXTURES / "mlm_fff_1x3", tmp_path / "clean")
    assert json.loads((folder / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert (folder / f"{MODELING_FILE}.py").is_file() and (folder / f"{KERNEL_STAND_IN}.py").is_file()


def test_the_folder_code_is_complete_and_needs_only_transformers_and_torch(saved) -> None:
    """The files ``transformers`` gathers for the modeling file (its relative imports, followed) are exactly those
    written, and none imports this package outside a ``try`` (which ``check_imports`` skips)."""
    folder, _ = saved["mlm_fff"]
    written = {path.name for path in folder.glob("*.py")}
    assert written == {f"{name}.py" for name in [*folder_files(CrammedBertForMaskedLM).values(), KERNEL_STAND_IN]}
    gathered = {Path(path).name for path in get_relative_import_files(folder / f"{MODELING_FILE}.py")}
    assert gathered | {f"{MODELING_FILE}.py"} == written
    for name in written:
        assert "ultrafastbert" not in get_imports(folder / name), name


def statements_besides_relative_imports(source: str, leave_out: tuple[str, str] | None = None) -> list[str]:
    """The top-level statements of ``source`` (dumped), less relative imports, ``try`` blocks (the rewritten
    imports) and the method ``leave_out`` (class, method)."""
    statements = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Try) or (isinstance(node, ast.ImportFrom) and node.level):
            continue
        if leave_out and isinstance(node, ast.ClassDef) and node.name == leave_out[0]:
            node.body = [member for member in node.body if getattr(member, "name", None) != leave_out[1]]
        statements.append(ast.dump(node))
    return statements


def test_the_folder_files_are_the_package_sources() -> None:
    """One owner per fact: the folder's files are the package's modules, apart from their relative imports and
    the package-only ``save_pretrained``; a module without relative imports is copied as it is."""
    files = folder_files(CrammedBertForMaskedLM)
    code = model_code(files)
    assert code["fff_reference"].split("\n", 1)[1] == (PACKAGE_ROOT / "fff" / "reference.py").read_text()
    for module, file in files.items():
        source = PACKAGE_ROOT.joinpath(*module.split(".")[1:]).with_suffix(".py").read_text()
        leave_out = ("FFFPreTrainedMixin", "save_pretrained") if module == BASE_MODULE else None
        assert statements_besides_relative_imports(code[file]) == statements_besides_relative_imports(
            source, leave_out
        ), file
    base = code[files[BASE_MODULE]]
    assert "def save_pretrained" not in base and "save_pretrained_with_code" not in base


# --- the committed folder code: generated at development time, copied at save time -----------------------------


def test_the_committed_folder_code_is_up_to_date() -> None:
    """``model/folder_code/`` is what the generator makes from the package's sources now; if not, one line names the
    stale file and the command that regenerates it."""
    stale = stale_files(codegen.generate())
    if stale:
        pytest.fail(stale_message(stale), pytrace=False)


def package_sources(root: Path) -> Path:
    """A copy of the package's ``.py`` sources under ``root`` (the committed folder code left out)."""
    for path in PACKAGE_ROOT.rglob("*.py"):
        if FOLDER_CODE not in path.parents:
            copy = root / PACKAGE_ROOT.name / path.relative_to(PACKAGE_ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(path.read_bytes())
    return root / PACKAGE_ROOT.name


def test_the_drift_check_names_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: files generated from a source edited afterwards, a committed file edited by hand,
    one missing and one no longer generated are each named, and regenerating clears them."""
    committed = tmp_path / "folder_code"
    generated = codegen.generate()
    assert write_folder_code(generated, committed) == sorted(generated)
    assert stale_files(generated, committed) == []
    sources = package_sources(tmp_path / "sources")
    reference = sources / "fff" / "reference.py"
    reference.write_text(reference.read_text().replace("def ", "def  ", 1))  # a source edit, not regenerated
    monkeypatch.setattr(portable, "PACKAGE_ROOT", sources)
    edited = codegen.generate()
    assert stale_files(edited, committed) == ["fff_reference.py"]
    monkeypatch.undo()
    assert stale_message(["fff_reference.py"]) == (
        "ultrafastbert/model/folder_code/fff_reference.py is out of date with the package sources: "
        "run `make folder-code`"
    )
    (committed / "fff_layer.py").write_text((committed / "fff_layer.py").read_text() + "# edited by hand\n")
    (committed / "model_loading.py").unlink()
    (committed / "fff_gone.py").write_text("")
    assert stale_files(generated, committed) == ["fff_gone.py", "fff_layer.py", "model_loading.py"]
    assert "\n" not in stale_message(stale_files(generated, committed), committed)
    assert write_folder_code(generated, committed) == ["fff_gone.py", "fff_layer.py", "model_loading.py"]
    assert stale_files(generated, committed) == []


def test_every_family_s_files_are_committed() -> None:
    """Each model family of the package (a subclass of the shared base) is generated: its folder files are there."""
    families, pending = set(), [FFFPreTrainedMixin]
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if subclass.__module__.startswith(f"{PACKAGE_ROOT.name}.") and subclass.folder_files:
                families.add(subclass)
    assert {family.__module__ for family in families} == {family.__module__ for family in codegen.FAMILIES}
    committed = {path.name for path in FOLDER_CODE.glob("*.py")}
    for family in families:
        assert {f"{name}.py" for name in [*folder_files(family).values(), KERNEL_STAND_IN]} <= committed, family


def test_saving_copies_the_committed_files_and_reads_no_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portable, "PACKAGE_ROOT", tmp_path / "no-sources")  # a source read would fail
    model = random_model(CrammedBertForMaskedLM, 30, 0, ffn_type="fff")
    model.save_pretrained(tmp_path / "saved")
    written = sorted((tmp_path / "saved").glob("*.py"))
    assert [path.name for path in written] == sorted(
        f"{name}.py" for name in [*folder_files(CrammedBertForMaskedLM).values(), KERNEL_STAND_IN]
    )
    for path in written:
        assert path.read_bytes() == (FOLDER_CODE / path.name).read_bytes(), path.name


def test_a_missing_committed_file_is_refused_before_saving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(FOLDER_CODE, tmp_path / "folder_code")
    (tmp_path / "folder_code" / "fff_sparse.py").unlink()
    monkeypatch.setattr(portable, "FOLDER_CODE", tmp_path / "folder_code")
    model = random_model(CrammedBertForMaskedLM, 30, 0)
    with pytest.raises(PortableCodeError, match=r"fff_sparse\.py is missing .*run `make folder-code`"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_the_package_keeps_serving_its_folders_without_remote_code(saved) -> None:
    loaded = AutoModelForSequenceClassification.from_pretrained(saved["cls_dense"][0])
    assert type(loaded) is CrammedBertForSequenceClassification
    assert type(AutoModelForMaskedLM.from_pretrained(saved["mlm_fff"][0]).encoder.layers[0].ffn) is FFF


def test_push_to_hub_from_save_pretrained_is_refused(tmp_path: Path) -> None:
    """Its upload happens inside ``PreTrainedModel.save_pretrained``, before the code is written."""
    model = random_model(CrammedBertForMaskedLM, 30, 0)
    with pytest.raises(ValueError, match="push_to_hub"):
        model.save_pretrained(tmp_path, push_to_hub=True)
    assert not list(tmp_path.iterdir())


# --- loading where the package is missing, or installed -------------------------------------------------------


def run_folder_script(saved, tmp_path: Path, block: bool) -> tuple[dict, str]:
    vocab_size = saved["mlm_dense"][1].config.vocab_size
    input_ids, attention_mask = batch(vocab_size)
    inputs = {
        "block": block,
        "folders": {name: str(folder) for name, (folder, _) in saved.items()},
        "resaved": str(tmp_path / "resaved"),
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "masked": MASKED,
        "classified": CLASSIFIED,
    }
    (tmp_path / "cwd").mkdir()
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(inputs)],
        cwd=tmp_path / "cwd",
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def assert_same_pipeline_outputs(theirs: list, ours: list) -> None:
    for their_results, our_results in zip(theirs, ours, strict=True):
        their_keys = [{k: v for k, v in r.items() if k != "score"} for r in their_results]
        assert their_keys == [{k: v for k, v in r.items() if k != "score"} for r in our_results]
        their_scores = torch.tensor([r["score"] for r in their_results])
        torch.testing.assert_close(
            their_scores, torch.tensor([r["score"] for r in our_results]), atol=TOLERANCE, rtol=0
        )


@pytest.mark.slow
@pytest.mark.parametrize("installed", [False, True], ids=["package-missing", "package-installed"])
def test_folders_load_with_remote_code_and_compute_what_the_package_computes(saved, tmp_path, installed) -> None:
    results, stderr = run_folder_script(saved, tmp_path, block=not installed)
    input_ids, attention_mask = batch(saved["mlm_dense"][1].config.vocab_size)
    for name, (folder, model) in saved.items():
        found = results[name]
        if not installed:  # installed, the folder code's import of the package registers its classes, which serve
            assert found["model_module"].startswith("transformers_modules.")
            assert found["model_module"].endswith(MODELING_FILE)
        with torch.no_grad():
            expected = model(input_ids, attention_mask).logits
            kernel_path = model.encoder.layers[0].ffn.resolve_impl(torch.zeros(1, 16)) if "fff" in name else None
        torch.testing.assert_close(torch.tensor(found["logits"]), expected, atol=TOLERANCE, rtol=0)
        if "fff" in name:
            # the package's FFF layer (and its kernel) where installed; the folder's pure-PyTorch copy otherwise
            if installed:
                assert found["ffn_module"] == "ultrafastbert.fff.layer" and found["ffn_path"] == kernel_path
            else:
                assert found["ffn_module"].startswith("transformers_modules.")
                assert found["ffn_module"].endswith(".fff_layer") and found["ffn_path"] == "walk"
        if name.startswith("mlm"):
            ours = pipeline("fill-mask", model=str(folder))(MASKED, top_k=5)
        else:
            ours = pipeline("text-classification", model=str(folder))(CLASSIFIED, top_k=None)
            assert {result["label"] for result in ours[0]} == set(LABELS.values())
        assert_same_pipeline_outputs(found["pipeline"], ours)
    torch.testing.assert_close(torch.tensor(results["resaved_logits"]), torch.tensor(results["mlm_fff"]["logits"]))
    fff_logits = torch.tensor(results["mlm_fff"]["logits"])
    torch.testing.assert_close(torch.tensor(results["bert_arguments"]["logits"]), fff_logits)
    assert results["bert_arguments"]["attentions"] == [[3, 4, 10, 10]] * 2
    assert results["qa_class"] == "CrammedBertForQuestionAnswering"
    if not installed:
        torch.testing.assert_close(torch.tensor(results["onnx_logits"]), fff_logits, atol=1e-4, rtol=1e-4)
    # a tokenizer class transformers does not know is read as its generic fast tokenizer, special tokens included
    assert json.loads((saved["mlm_fff"][0] / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "CrammedBertTokenizer"
    )
    expected_ids = load_tokenizer(saved["mlm_dense"][0])(MASKED + CLASSIFIED)["input_ids"]
    assert results["tokenized_mlm_dense"] == results["tokenized_mlm_fff"] == expected_ids
    if installed:
        assert "ultrafastbert.fff.layer" in results["imported"]
    else:
        assert results["imported"] == []
        assert "ultrafastbert is not installed: the FFF layers of this model folder run their pure-PyTorch" in stderr
