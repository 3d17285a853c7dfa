"""Node overlap precision/recall and influence shares on hand-built circuits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clt_bench.baseline.circuit_overlap import (
    FeatureSite,
    circuit_cells,
    influence_share,
    model_identity,
    node_overlap,
    per_component_share,
    precision_recall,
    published_applies,
)
from clt_bench.baseline.circuits import make_circuit

CIRCUIT = make_circuit("hand", {"END": ["mlp2", "mlp3", "1.0"], "YY": ["mlp0", "0.1"]})


def test_cells():
    assert circuit_cells(CIRCUIT, "mlp") == {(2, "END"), (3, "END"), (0, "YY")}
    assert circuit_cells(CIRCUIT) == {(2, "END"), (3, "END"), (0, "YY"), (1, "END")}


def test_precision_recall():
    sites = [
        FeatureSite(2, "END"),
        FeatureSite(2, "END"),
        FeatureSite(0, "YY"),
        FeatureSite(1, "YY"),
        FeatureSite(0, "other"),
    ]
    ov = node_overlap(sites, CIRCUIT)
    # found cells: (2,END), (0,YY), (1,YY) -- "other" positions are left out
    assert ov["mlp_precision"] == pytest.approx(2 / 3)
    assert ov["mlp_recall"] == pytest.approx(2 / 3)
    assert ov["all_precision"] == pytest.approx(2 / 3)
    assert ov["all_recall"] == pytest.approx(2 / 4)
    assert ov["all_n_common"] == 2
    perfect = node_overlap(
        [FeatureSite(2, "END"), FeatureSite(3, "END"), FeatureSite(0, "YY")], CIRCUIT
    )
    assert perfect["mlp_precision"] == perfect["mlp_recall"] == perfect["mlp_f1"] == 1.0
    empty = precision_recall(set(), {(0, "YY")})
    assert math.isnan(empty["precision"]) and empty["recall"] == 0.0


def test_influence_share():
    sites = [FeatureSite(0, "YY"), FeatureSite(1, "END")]
    # feature 0 writes layers 0..3 at YY; feature 1 writes layers 1..3 at END
    write = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 2.0, -1.0, 1.0]])
    # inside: f0 -> mlp0@YY (1.0); f1 -> mlp2@END (|-1|) + mlp3@END (1) => 3 of 6
    assert influence_share(sites, write, CIRCUIT) == pytest.approx(3 / 6)
    shares = per_component_share("END", write[1], CIRCUIT)
    assert shares == {"mlp2@END": pytest.approx(0.25), "mlp3@END": pytest.approx(0.25)}
    assert per_component_share("other", write[1], CIRCUIT) == {}


def test_published_circuits_by_identity_not_shape():
    from clt_bench.baseline.circuits import PUBLISHED, load_circuit

    for name in PUBLISHED:
        c = load_circuit(name)
        for model in ("gpt2", "hf:gpt2", "hf:openai-community/gpt2", "GPT2"):
            assert published_applies(c, model), (name, model)
        # same shape (12 layers x 12 heads), other weights: no published circuit
        for model in ("gpt2-random", "hf:EleutherAI/pythia-160m", "toy", "hf:gpt2-medium"):
            assert not published_applies(c, model), (name, model)
    assert model_identity("hf:openai-community/gpt2") == "gpt2"
    assert not published_applies(make_circuit("x", {"END": ["mlp0"]}), "gpt2")  # no model named
