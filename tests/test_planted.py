"""The planted model: SIIT machinery exactness, the shipped weights' acceptance numbers, grading.

Exactness runs on tiny random GPT-2 modules; the acceptance numbers run on the shipped weights
(a few hundred prompt pairs), so a retrain that breaks the planted circuit fails CI.
"""

from __future__ import annotations

import hashlib
import tomllib

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from clt_bench.baseline.circuits import Circuit, Node, load_circuit
from clt_bench.baseline.ground_truth import (
    discovery_scores,
    known_circuit,
    ridge_probe,
    site_share,
    truth_edges,
)
from clt_bench.errors import UserError
from clt_bench.model_training.planted_eval import interchange_accuracy, strictness
from clt_bench.model_training.planted_pairs import hl_output, make_pairs, prompt_pool
from clt_bench.models.planted import PLANTED_DIR, load_planted_module, load_planted_spec
from clt_bench.models.siit import Component, PatchMask, patched, record
from clt_bench.paths import baselines_dir

SPEC = load_planted_spec()


def tiny_module(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=6, n_head=4, n_embd=16, n_inner=32, n_positions=32, vocab_size=50257)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def pairs():
    pool = prompt_pool(16, 3)
    return make_pairs(pool, torch.arange(16), torch.Generator().manual_seed(0), 0.0)


# ---- SIIT machinery: exactness on a tiny random model ------------------------------------------


@pytest.mark.parametrize(
    "comp", [Component(1, "mlp"), Component(3, "head", 2), Component(5, "mlp")]
)
def test_intervention_gives_the_source_activation_exactly(pairs, comp):
    model = tiny_module()
    with torch.no_grad():
        _, base = record(model, pairs.base)
        _, src = record(model, pairs.source)
        mask = PatchMask(len(pairs), pairs.base.shape[1], 6, 4)
        mask.set(slice(None), comp, [pairs.end_pos])
        after: dict = {}
        patched(model, pairs.base, src, mask, store=after)
    key = ("z", comp.layer) if comp.kind == "head" else ("mlp", comp.layer)
    got, want = after[key], src[key]
    if comp.kind == "head":
        got, want = got[:, :, comp.head], want[:, :, comp.head]
    assert torch.equal(got[:, pairs.end_pos], want[:, pairs.end_pos])
    # the other positions and every earlier layer keep the base run's values
    others = [p for p in range(pairs.base.shape[1]) if p != pairs.end_pos]
    assert torch.equal(after[key][:, others], base[key][:, others])
    for layer in range(comp.layer):
        assert torch.equal(after[("mlp", layer)], base[("mlp", layer)])
    # and the source differs from the base there (the test could fail)
    assert not torch.equal(src[key][:, pairs.end_pos], base[key][:, pairs.end_pos])


def _zero_outside_circuit(model: GPT2LMHeadModel) -> None:
    """Zero the output weights of every head and MLP that realises no high-level variable."""
    aligned = {c for c, _ in SPEC.aligned()}
    d_head = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        for layer, block in enumerate(model.transformer.h):
            block.attn.c_proj.bias.zero_()
            for h in range(model.config.n_head):
                if Component(layer, "head", h) not in aligned:
                    block.attn.c_proj.weight[h * d_head : (h + 1) * d_head] = 0
            if Component(layer, "mlp") not in aligned:
                block.mlp.c_proj.weight.zero_()
                block.mlp.c_proj.bias.zero_()


def test_strictness_is_zero_when_the_non_circuit_nodes_are_zeroed(pairs):
    model = tiny_module()
    _zero_outside_circuit(model)
    moved = strictness(model, SPEC, pairs, per_node=True)["per_node_abs_pd_moved"]
    # a component aligned at one position (the layer-0 heads at YY) still acts at the others, so
    # zeroing weights silences exactly the components aligned nowhere
    aligned = {c.label for c, _ in SPEC.aligned()}
    silent = {k: v for k, v in moved.items() if k.split("@")[0] not in aligned}
    assert len(silent) > 100 and max(silent.values()) == 0.0
    control = strictness(tiny_module(), SPEC, pairs, per_node=True)["per_node_abs_pd_moved"]
    assert max(control.values()) > 0.0  # without the zeroing some node moves PD


def test_high_level_output_is_the_corpus_law():
    p = hl_output(torch.tensor([17, 17]), torch.tensor([11, 1]))
    assert torch.allclose(p.sum(-1), torch.ones(2))
    assert float(p[0, :12].sum()) == 0.0 and float(p[1, :2].sum()) == 0.0  # ZZ > YY only
    assert int(p[0].argmax()) == 12  # the gap is mostly geometric: YY + 1 is the likeliest


# ---- the shipped weights' acceptance numbers ---------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    return load_planted_module()


@pytest.fixture(scope="module")
def held_out():
    pool = prompt_pool(256, 1234)  # not the training seed (2024) nor the model card's (77)
    return make_pairs(pool, torch.arange(256), torch.Generator().manual_seed(1234), 0.0)


def test_planted_interchange_accuracy(planted, held_out):
    bar = SPEC.acceptance["interchange_accuracy_min"]
    for name, scores in interchange_accuracy(planted, SPEC, held_out).items():
        assert scores["accuracy"] >= bar, (name, scores)


@pytest.fixture(scope="module")
def strict_scores(planted, held_out):
    return strictness(planted, SPEC, held_out, per_node=True)


def test_planted_strictness_mean_and_task(strict_scores):
    assert strict_scores["mean"] <= SPEC.acceptance["strictness_mean_max"], strict_scores["mean"]
    assert strict_scores["prob_diff"] >= SPEC.acceptance["prob_diff_min"]


def test_planted_strictness_worst_node(strict_scores):
    worst = strict_scores["worst"]
    assert worst <= SPEC.acceptance["strictness_worst_max"], (strict_scores["worst_node"], worst)


def test_planted_corrupted_prob_diff(strict_scores):
    assert strict_scores["corrupted_prob_diff"] <= SPEC.acceptance["corrupted_prob_diff_max"]


def test_planted_circuit_faithfulness(planted):
    from clt_bench.baseline.faithfulness import evaluate_circuit
    from clt_bench.baseline.patching import PatchContext
    from clt_bench.models import load_model
    from clt_bench.task.dataset import build_dataset
    from clt_bench.task.spec import load_task

    loaded = load_model("planted")
    batch = build_dataset(load_task("greater_than"), loaded.tokenizer, "discovery", "hanna", 150, 9)
    ctx = PatchContext.build(loaded.bridge, batch, "clean", 256)
    faith, _ = evaluate_circuit(ctx, load_circuit("planted"), n_random=2, seed=0)
    assert faith["faithfulness_components_ratio"] >= SPEC.acceptance["faithfulness_components_min"]
    assert faith["faithfulness_paths_ratio"] >= SPEC.acceptance["faithfulness_paths_min"]


def test_model_card_records_the_acceptance_numbers():
    import json

    card = json.loads((PLANTED_DIR / "config.json").read_text())
    acc = card["acceptance"]
    assert card["arch"]["n_layer"] >= 6
    assert set(acc["passed"]) == {k for k in SPEC.acceptance if not k.startswith("faithfulness")}
    assert acc["corpus_loss"] > 0 and acc["toy_corpus_loss"] > 0
    # the shipped weights meet every bar of the card (the tests above re-measure them)
    missed = sorted(k for k, ok in acc["passed"].items() if not ok)
    assert missed == []


# ---- training is deterministic from its seed ---------------------------------------------------


@pytest.mark.slow
def test_planted_training_is_deterministic(tmp_path):
    from clt_bench.model_training.planted_train import PlantedTrainConfig, train_planted

    cfg = PlantedTrainConfig(
        steps=3, n_documents=64, n_pair_prompts=64, pair_batch=8, eval_every=1000
    )
    digests = []
    for run in ("a", "b"):
        train_planted(cfg, tmp_path / run, acceptance=False)
        digests.append(hashlib.sha256((tmp_path / run / "planted.safetensors").read_bytes()))
    assert digests[0].hexdigest() == digests[1].hexdigest()


def test_adaptive_strictness_weights_follow_the_last_evaluation():
    from clt_bench.model_training.planted_train import PlantedTrainConfig, strict_weights
    from clt_bench.models.siit import all_components

    comps = all_components(6, 4)
    hist = [{"strictness": {"per_node": {"mlp0@all": 0.9, "a0.h2@all": 0.01, "a0.h2@END": 5.0}}}]
    assert strict_weights(PlantedTrainConfig(strict_sampling="uniform"), hist) is None
    assert strict_weights(PlantedTrainConfig(), []) is None  # before the first evaluation
    w = strict_weights(PlantedTrainConfig(strict_floor=0.02), hist)
    by = dict(zip([c.label for c in comps], w.tolist(), strict=True))
    assert by["mlp0"] == 0.9 and by["a0.h2"] == 0.02 and by["mlp3"] == 0.02  # floored
    no_gap = [{"strictness": {"per_node": {"mlp0@all": float("inf")}}}]
    assert strict_weights(PlantedTrainConfig(), no_gap) is None
    with pytest.raises(UserError):
        PlantedTrainConfig(strict_sampling="greedy").validate()


@pytest.mark.slow
def test_planted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Adaptive strictness sampling reads the checkpointed history: a run killed after its step-2
    checkpoint resumes to the weights of an uninterrupted run."""
    import clt_bench.model_training.planted_train as pt

    cfg = pt.PlantedTrainConfig(
        steps=4, n_documents=64, n_pair_prompts=64, pair_batch=8, eval_every=2, checkpoint_every=2
    )
    pt.train_planted(cfg, tmp_path / "whole", acceptance=False)
    save = pt._save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pt, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pt.train_planted(cfg, tmp_path / "killed", acceptance=False)
    monkeypatch.setattr(pt, "_save_checkpoint", save)
    info = pt.train_planted(cfg, tmp_path / "killed", acceptance=False)
    assert [h["step"] for h in info["history"]] == [2, 4]
    digest = [
        hashlib.sha256((tmp_path / r / "planted.safetensors").read_bytes()).hexdigest()
        for r in ("whole", "killed")
    ]
    assert digest[0] == digest[1]


# ---- grading against the planted circuit -------------------------------------------------------


def test_known_circuit_only_for_the_planted_model():
    assert known_circuit("planted").name == "planted"
    assert known_circuit("toy") is None and known_circuit("gpt2") is None


def test_discovery_scores_count_nodes_and_edges():
    truth = load_circuit("planted")
    exact = Circuit("found", truth.nodes, edges=tuple(sorted(truth_edges(truth))))
    s = discovery_scores(exact, truth)
    assert s["node_precision"] == s["node_recall"] == 1.0
    assert s["edge_precision"] == s["edge_recall"] == 1.0
    extra = Node("END", 0, "head", 1)
    more = Circuit("found", (*truth.nodes, extra), edges=(("a0.h1@END", "logits@END"),))
    s = discovery_scores(more, truth)
    n = len(truth.nodes)
    assert s["node_recall"] == 1.0 and s["node_precision"] == pytest.approx(n / (n + 1))
    assert s["edge_precision"] == 0.0 and s["extra_nodes"] == ["a0.h1@END"]


def test_truth_edges_follow_the_toml():
    data = tomllib.loads((baselines_dir() / "planted.toml").read_text())
    assert ("mlp1@YY", "a3.h0@END") in truth_edges(load_circuit("planted"))
    assert len(truth_edges(load_circuit("planted"))) < len(
        data["high_level"]["edges"]["components"]
    )


def test_site_share_and_probe():
    layers, pos = torch.tensor([1, 4, 0, 5]), torch.tensor([8, 12, 12, 3])
    infl = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert site_share(layers, pos, infl, {(1, 8), (4, 12), (5, 12)}) == pytest.approx(0.3)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200).float() % 97
    x = torch.randn(200, 30, generator=g)
    x[:, 0] = y  # a unit that carries YY linearly
    assert ridge_probe(x, y)["r2"] > 0.99
    assert ridge_probe(torch.randn(200, 30, generator=g), y)["r2"] < 0.2
