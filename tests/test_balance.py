"""Balanced trees: the routing offset in every FFF path against the reference, the balancing rule, and the promise
that a layer without balancing is the published one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from fff_helpers import (
    TOLERANCE,
    assert_gradients_close,
    paths_agree_or_tie,
    random_input,
    random_layer,
    relative_error,
    run_with_grads,
)
from torch._subclasses.fake_tensor import FakeTensorMode

from ultrafastbert import FFF
from ultrafastbert.fff import kernels, nodes_per_tree, ops, update_routing_offsets
from ultrafastbert.fff.balance import (
    balancing_layers,
    count_visits_at,
    routing_step,
    take_routing_loss,
    take_routing_visits,
)
from ultrafastbert.model.crammedbert.configuration import CrammedBertConfig
from ultrafastbert.model.crammedbert.modeling import CrammedBertForMaskedLM
from ultrafastbert.train.config import PretrainConfig
from ultrafastbert.train.pretrain import Pretrainer

torch.set_num_threads(1)

GRAD_PATHS = ["sparse", "auto"] + (["kernel"] if kernels.available() else [])
NO_GRAD_PATHS = ["sparse", "walk", "auto"] + (["kernel"] if kernels.available() else [])


def balancing_layer(
    width: int, depth: int, trees: int, dtype: torch.dtype = torch.float32, seed: int = 0, offset_std: float = 0.5
) -> FFF:
    """``random_layer``'s weights in a balancing layer whose offsets are random (offset 0 would hide offset bugs),
    comparable to the logits so that they change many paths."""
    plain = random_layer(width, depth, trees, seed=seed)
    layer = FFF(width, depth, trees, balance_rate=0.01)
    layer.load_state_dict(plain.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        layer.routing_offset.normal_(0.0, offset_std, generator=generator)
    return layer.to(dtype)


def assert_matches_reference(layer: FFF, x: torch.Tensor) -> None:
    tol = TOLERANCE[x.dtype]
    ref_out, ref_path, ref_grads = run_with_grads(layer, x, "reference")
    for impl in GRAD_PATHS:
        out, path, grads = run_with_grads(layer, x, impl)
        assert layer.routing_offset.grad is None
        if paths_agree_or_tie(layer, x, path, ref_path):  # only a logit within rounding of -offset may differ
            assert relative_error(out, ref_out) <= tol, impl
            assert_gradients_close(layer, x, grads, ref_grads, tol, impl)
    with torch.no_grad():
        for impl in NO_GRAD_PATHS:
            layer.impl = impl
            out, path = layer(x, return_path=True)
            if paths_agree_or_tie(layer, x, path, ref_path):
                assert relative_error(out, ref_out) <= tol, impl
                assert relative_error(layer(x), ref_out) <= tol, impl


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "depth,trees,width,lead",
    [(6, 1, 32, (5, 7)), (0, 1, 1, (1,)), (0, 3, 17, (4,)), (4, 4, 33, (2, 3)), (3, 2, 19, (1,)), (5, 2, 64, (0, 3))],
)
def test_paths_match_reference_with_offsets(depth, trees, width, lead, dtype):
    """Every path routes on ``logit + offset`` like the reference: depth 0, batch 1, odd widths, several trees,
    an empty batch, float32 and bfloat16, forward and gradients."""
    layer = balancing_layer(width, depth, trees, dtype=dtype, seed=depth * 10 + trees)
    assert_matches_reference(layer, random_input((*lead, width), dtype=dtype, seed=depth + width))


def test_offsets_change_paths_but_not_activations():
    """The offset decides the child only: a token's output is the sum over its path of GELU(logit) * w_out."""
    layer = balancing_layer(24, 5, 2, seed=3, offset_std=2.0)
    x = random_input((64, 24), seed=4)
    with torch.no_grad():
        _, path = layer(x, return_path=True)
        offset = layer.routing_offset.clone()
        layer.routing_offset.zero_()
        _, plain_path = layer(x, return_path=True)
        layer.routing_offset.copy_(offset)
        out = layer(x)
        logits = x @ layer.linear_in.weight.T + layer.linear_in.bias  # (N, K*n)
        flat = path.reshape(64, -1)
        expected = torch.einsum(
            "nv,nvh->nh", torch.nn.functional.gelu(logits.gather(1, flat)), layer.linear_out.weight.T[flat]
        )
    assert not torch.equal(path, plain_path)
    assert relative_error(out, expected) <= 1e-5


@pytest.mark.parametrize("impl", ["reference", "sparse", "walk"])
def test_zero_offset_is_bit_identical_to_the_plain_layer(impl):
    plain = random_layer(40, 6, 3, seed=11)
    balancing = FFF(40, 6, 3, balance_rate=0.05)
    balancing.load_state_dict(plain.state_dict(), strict=False)
    x = random_input((9, 40), seed=12)
    if impl == "walk":
        with torch.no_grad():
            plain.impl = balancing.impl = impl
            assert torch.equal(plain(x), balancing(x))
        return
    out, path, grads = run_with_grads(plain, x, impl)
    b_out, b_path, b_grads = run_with_grads(balancing, x, impl)
    assert torch.equal(out, b_out) and torch.equal(path, b_path)
    for grad, b_grad in zip(grads, b_grads, strict=True):
        assert torch.equal(grad, b_grad)


def test_a_plain_layer_has_the_published_state_dict():
    """Balancing off: no offset buffer, so published checkpoints load strictly; on: the offset is saved."""
    assert list(FFF(8, 2).state_dict()) == ["linear_in.weight", "linear_in.bias", "linear_out.weight"]
    assert "routing_offset" in FFF(8, 2, balance_rate=0.1).state_dict()
    FFF(8, 2).load_state_dict(FFF(8, 2).state_dict(), strict=True)
    config = CrammedBertConfig.from_preset("tiny-ufb-1x4")
    assert config.fff_balance_rate == 0


def test_offsets_stay_float32_and_load_exactly():
    layer = balancing_layer(8, 3, 2, seed=5)
    layer.routing_offset.add_(1e-3)  # a step that bfloat16 would round away
    saved = layer.routing_offset.clone()
    layer = layer.to(torch.bfloat16)
    assert layer.routing_offset.dtype == torch.float32 and torch.equal(layer.routing_offset, saved)
    copy = FFF(8, 3, 2, balance_rate=0.01, dtype=torch.bfloat16)
    copy.load_state_dict(layer.state_dict(), strict=True)
    assert torch.equal(copy.routing_offset, saved)


def test_routing_step_pushes_against_the_busier_side():
    # depth 2, one tree, heap order: the root sends 7 of 10 right (down), node 1 sends 1 of 3 right (up), node 2
    # sends all 7 right (down); an even split or a node nobody reached stays
    visits = torch.tensor([[10, 3, 7, 2, 1, 0, 7]])
    assert routing_step(visits, 2).tolist() == [[-1, 1, -1]]
    assert routing_step(torch.tensor([[4, 2, 2, 1, 1, 1, 1]]), 2).tolist() == [[0, 0, 0]]
    assert routing_step(torch.tensor([[4, 4, 0, 2, 2, 0, 0]]), 2).tolist() == [[1, 0, 0]]


def test_balancing_moves_a_skewed_tree_towards_an_even_split():
    """A root whose bias sends ~98% of the tokens right (another tree's ~98% left) ends near 50/50 after steps
    with the rule, the weights held still so that the offsets alone move; every leaf ends near its even share."""
    torch.manual_seed(0)
    depth, trees = 3, 2

    def skewed(rate: float) -> FFF:
        layer = random_layer(16, depth, trees, seed=1)
        balancing = FFF(16, depth, trees, balance_rate=rate)
        balancing.load_state_dict(layer.state_dict(), strict=False)
        with torch.no_grad():
            balancing.linear_in.bias[0] = 2.0 * balancing.linear_in.weight[0].norm()  # tree 0: almost all right
            balancing.linear_in.bias[nodes_per_tree(depth)] = -2.0 * balancing.linear_in.weight[0].norm()
        return balancing

    x = random_input((1024, 16), seed=2)

    def root_right_share(layer: FFF) -> list[float]:
        path = layer.visited_nodes(x)  # (N, K, D+1)
        return ((path[:, :, 1] - path[:, :, 0]) == 2).double().mean(0).tolist()

    layer = skewed(0.05)
    assert [round(s, 1) for s in root_right_share(layer)] == [1.0, 0.0]
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)  # the offsets alone move
    for _ in range(80):
        layer.train()
        layer(x).square().mean().backward()
        optimizer.step()
        assert update_routing_offsets(layer) == 1
    for share in root_right_share(layer):
        assert 0.45 <= share <= 0.55
    path = layer.visited_nodes(x)
    leaf_visits = torch.bincount(path[:, :, -1].flatten(), minlength=trees * nodes_per_tree(depth))
    leaves = leaf_visits.reshape(trees, -1)[:, 2**depth - 1 :]
    assert leaves.min() >= 0.5 * x.shape[0] / 2**depth  # every leaf near its even share


def test_visits_are_recorded_in_training_forwards_only():
    layer = balancing_layer(8, 2, 2, seed=1)
    x = random_input((5, 8), seed=2)
    layer.eval()
    layer(x)
    with torch.no_grad():
        layer.train()
        layer(x)
    assert layer.routing_visits is None
    layer.train()
    layer(x)
    layer(x)
    (taken,) = take_routing_visits(layer)
    assert taken[1].shape == (2, 7) and taken[1][:, 0].tolist() == [10, 10]
    assert layer.routing_visits is None and update_routing_offsets(layer) == 0


@pytest.mark.parametrize("impl", ["reference", "sparse", "kernel"])
def test_visits_count_only_the_selected_tokens(impl):
    """Inside ``count_visits_at`` a layer records the paths of the selected tokens and no others (the tokens of a
    (B, S) batch, as masked-language-model training selects them); outside it, every token counts again."""
    if impl == "kernel" and not kernels.available():
        pytest.skip("the compiled kernel is not available")
    layer = balancing_layer(8, 3, 2, seed=3)
    layer.impl = impl
    layer.train()
    x = random_input((3, 7, 8), seed=4)
    keep = torch.rand(3, 7, generator=torch.Generator().manual_seed(5)) < 0.6
    with count_visits_at(layer, keep):
        layer(x)
    assert layer.visit_tokens is None  # cleared on leaving the block
    (taken,) = take_routing_visits(layer)
    paths = layer.visited_nodes(x.detach())[keep]  # (kept tokens, trees, depth + 1)
    expected = torch.bincount(paths.reshape(-1), minlength=taken[1].numel()).reshape(taken[1].shape)
    assert int(keep.sum()) < keep.numel() and torch.equal(taken[1], expected)
    layer(x)
    (taken,) = take_routing_visits(layer)
    assert taken[1][:, 0].tolist() == [21, 21]


def test_a_visit_selection_of_the_wrong_size_is_refused():
    layer = balancing_layer(8, 2, 1, seed=1)
    layer.train()
    with count_visits_at(layer, torch.ones(4, dtype=torch.bool)), pytest.raises(ValueError, match="among 4 tokens"):
        layer(random_input((5, 8), seed=2))


@pytest.mark.parametrize("positions", ["unmasked", "all"])
def test_pretraining_counts_visits_at_the_chosen_positions(tmp_path, positions):
    """The pretraining step counts routing visits (for balance and tree health) at the positions the masking left
    unchanged (label -100) by default, at every position with ``balance_positions="all"``: a step's root count
    equals the number of such tokens."""
    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from pretrain_tiny import SEQ_LEN, VOCAB, mask_quarter, synthetic_sequences

    config = CrammedBertConfig.from_preset(
        "tiny-ufb-1x3", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, fff_balance_rate=0.05,
    )  # fmt: skip
    model = CrammedBertForMaskedLM(config)
    settings = PretrainConfig(
        micro_batch=4, final_batch=4, max_steps=1, lr=1e-3, tree_health_every_steps=0, balance_positions=positions
    )
    unmasked = []

    def masker(ids, generators):
        inputs, labels = mask_quarter(ids, generators)
        unmasked.append(int((labels == -100).sum()))
        return inputs, labels

    trainer = Pretrainer(model, synthetic_sequences(16, seed=1), masker, settings, tmp_path / "run")
    seen = []
    trainer._balance_trees = lambda: seen.extend(take_routing_visits(model))
    trainer.train_step(0.0)
    ((layer, counts),) = seen
    assert len(unmasked) == 1 and 0 < unmasked[0] < 4 * SEQ_LEN
    assert counts[0, 0].item() == (unmasked[0] if positions == "unmasked" else 4 * SEQ_LEN)


@pytest.mark.parametrize("rate", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_balance_rate_is_a_one_line_error(rate):
    with pytest.raises(ValueError, match=r"^FFF balance_rate must be a finite number >= 0, got .*$"):
        FFF(8, 2, balance_rate=rate)


@pytest.mark.parametrize("rate", [-0.1, float("nan"), -1])
def test_bad_config_balance_rate_is_a_one_line_error(rate):
    with pytest.raises(ValueError, match=r"^fff_balance_rate must be a finite number >= 0, got .*$"):
        CrammedBertConfig.from_preset("tiny-ufb-1x4", fff_balance_rate=rate)


def test_pretraining_balances_trees_logs_health_and_resumes_exactly(tmp_path):
    """A balancing model's offsets move during pretraining, its tree health is logged every N steps, and a run
    resumed from a checkpoint ends with the same offsets as one that was not interrupted."""
    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from pretrain_tiny import SEQ_LEN, VOCAB, mask_quarter, synthetic_sequences

    def run(output: Path, stop_after: int | None = None, resume: bool = False) -> CrammedBertForMaskedLM:
        torch.manual_seed(0)
        config = CrammedBertConfig.from_preset(
            "tiny-ufb-1x3", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, hidden_size=16,
            num_hidden_layers=2, num_attention_heads=2, fff_balance_rate=0.05, embedding_dropout_prob=0.0,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        model = CrammedBertForMaskedLM(config)
        settings = PretrainConfig(
            micro_batch=8, final_batch=8, max_steps=6, lr=3e-3, checkpoint_every_minutes=60,
            tree_health_every_steps=2,
        )  # fmt: skip
        batches = []

        def masker(ids, generators):  # one micro-batch a step: asks to stop (as SIGINT does) after stop_after
            batches.append(1)
            if stop_after is not None and len(batches) == stop_after:
                trainer._stop_requested = True
            return mask_quarter(ids, generators)

        trainer = Pretrainer(model, synthetic_sequences(64, seed=1), masker, settings, output)
        if resume:
            assert trainer.resume() and trainer.step == 3
        trainer.run()
        return model

    def offsets(model: CrammedBertForMaskedLM) -> list[torch.Tensor]:
        return [layer.routing_offset.clone() for layer in balancing_layers(model)]

    whole = run(tmp_path / "whole")
    assert all(offset.abs().max() > 0 for offset in offsets(whole))
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    health = [record["tree_health"] for record in records if "tree_health" in record]
    assert len(health) == 3
    for figures in health:
        assert len(figures["unvisited_leaves"]) == 2 and all(0 <= v <= 1 for v in figures["unvisited_leaves"])
        assert all(0 < v <= 1 for v in figures["leaf_entropy"]) and all(0 <= v <= 1 for v in figures["root_left"])
    run(tmp_path / "split", stop_after=3)
    resumed = run(tmp_path / "split", resume=True)
    for a, b in zip(offsets(whole), offsets(resumed), strict=True):
        assert torch.equal(a, b)


def test_the_load_balancing_loss_pushes_logits_against_the_busier_side():
    """The alternative remedy: its gradient lowers the bias of a node sending most tokens right, raises it where
    most go left, and training on it alone balances a skewed root."""
    depth = 3
    layer = FFF(16, depth, 2, balance_loss=1.0)
    layer.load_state_dict(random_layer(16, depth, 2, seed=1).state_dict())
    root_bias = layer.linear_in.bias
    with torch.no_grad():
        root_bias[0] = 2.0 * layer.linear_in.weight[0].norm()  # tree 0 sends all right
        root_bias[nodes_per_tree(depth)] = -2.0 * layer.linear_in.weight[0].norm()  # tree 1 all left
    x = random_input((512, 16), seed=2)
    layer.train()
    layer(x)
    loss = take_routing_loss(layer)
    assert loss is not None and layer.routing_loss is None
    loss.backward()
    assert root_bias.grad[0] > 0 and root_bias.grad[nodes_per_tree(depth)] < 0
    optimizer = torch.optim.SGD([root_bias], lr=20.0)
    for _ in range(100):
        optimizer.zero_grad()
        layer(x)
        take_routing_loss(layer).backward()
        optimizer.step()
    path = layer.visited_nodes(x)
    shares = ((path[:, :, 1] - path[:, :, 0]) == 2).double().mean(0).tolist()
    assert all(0.3 <= share <= 0.7 for share in shares), shares


@pytest.mark.skipif(not kernels.available(), reason="compiled kernel unavailable on this machine")
def test_the_ops_take_routing_offsets_with_checked_fakes_and_autograd():
    """``opcheck`` (schema, fake tensors, autograd) on the CPU ops with an offset, and a wrongly shaped offset
    refused with the kernel's message, by the kernel and by the fake alike."""
    layer = balancing_layer(16, 2, 2, seed=4)
    x = random_input((5, 16), seed=5)
    weights = (layer.linear_in.weight.detach(), layer.linear_in.bias.detach(), layer._weight_out_t())
    offset = layer.routing_offset
    for op, inputs in (
        (torch.ops.ultrafastbert.fff_infer.default, (x, *weights, 2, 2, offset)),
        (torch.ops.ultrafastbert.fff_forward.default, (x.clone().requires_grad_(True), *weights, 2, 2, offset)),
    ):
        report = torch.library.opcheck(op, inputs)
        assert all(outcome == "SUCCESS" for outcome in report.values()), report
    message = r"fff: routing_offset must be \(14,\) float32"
    with pytest.raises(RuntimeError, match=message):
        ops.fff_infer(x, *weights, 2, 2, offset[:-1])
    with pytest.raises(RuntimeError, match=message):
        ops.fff_forward(x, *weights, 2, 2, offset.double())
    short = offset[:-1].clone()
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
        fake = [mode.from_tensor(t) for t in (x, *weights, short)]
        ops.fff_forward(*fake[:4], 2, 2, fake[4])
