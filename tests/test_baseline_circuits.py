"""Published circuits as data, the shared schema, validation and the CLI's bad-input path."""

from __future__ import annotations

import json

import pytest

from clt_bench.baseline.circuits import (
    PUBLISHED,
    circuit_from_dict,
    load_circuit,
    parse_component,
    validate_circuit,
)
from clt_bench.errors import UserError
from clt_bench.paths import published_circuit_names

# spec section 5: Hanna release code 7 mid heads, ACDC 6, EAP-IG 8; all three share
# a0.h1 a0.h3 a0.h5 + MLP0-3 at YY and MLP8-11 at END (EAP-IG: 19 nodes)
COUNTS = {"hanna2023": (18, 10, 8), "acdc": (17, 9, 8), "eap_ig": (19, 11, 8)}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_counts(name):
    c = load_circuit(name)
    assert (len(c.nodes), c.n_heads, c.n_mlps) == COUNTS[name]
    assert c.provenance["source"] == "published" and c.provenance["paper"]
    assert {n.component for n in c.at("YY")} == {
        "0.1",
        "0.3",
        "0.5",
        "mlp0",
        "mlp1",
        "mlp2",
        "mlp3",
    }
    assert {n.component for n in c.at("END") if n.kind == "mlp"} == {
        f"mlp{i}" for i in range(8, 12)
    }
    validate_circuit(c, 12, 12)


def test_published_numbers():
    assert set(PUBLISHED) <= set(published_circuit_names())
    h = load_circuit("hanna2023").published
    assert (h["model_prob_diff"], h["model_cutoff_sharpness"]) == (0.817, 0.059)
    assert (
        h["circuit_prob_diff"],
        h["faithfulness_ratio_secondary"],
        h["necessity_prob_diff"],
    ) == (0.727, 0.895, -0.366)
    # the path-level ratio beside which measurements go is the ratio of the two published PDs
    assert h["circuit_paths_ratio_derived"] == pytest.approx(0.727 / 0.817, abs=5e-4)
    assert load_circuit("hanna2023").paths["feed_only_end_heads"] == ["0.3", "0.5"]
    assert h["mlp_effect_shares"]["mlp10"] == {"direct": 0.56, "indirect": 0.16}
    assert h["dunefsky2024"]["mlp10_transcoder_prob_diff"] == 0.7978
    assert h["goodfire2025"]["replacement_accuracy"] == 0.59
    a = load_circuit("acdc").published
    assert a["roc_auc"]["acdc_edges_kl"] == 0.883 and a["n_edges"] == 262
    e = load_circuit("eap_ig").published
    assert e["n_nodes"] == 19 and e["n_edges"] == 240
    assert e["circuit_prob_diff_by_edges"]["eap_ig_1000_edges"] == 0.822


def test_schema_round_trip(tmp_path):
    c = load_circuit("eap_ig")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(c.to_dict()))
    back = load_circuit(str(path))
    assert back.nodes == c.nodes and back.published == c.published
    assert parse_component("a5.h1", "end").component == "5.1"
    assert parse_component("mlp10", "YY").label == "mlp10@YY"


@pytest.mark.parametrize("bad", [{"END": ["12.0"]}, {"END": ["3.12"]}, {"YY": ["mlp12"]}])
def test_validate_rejects_missing_components(bad):
    c = circuit_from_dict({"name": "x", "components": bad}, "x")
    with pytest.raises(UserError, match="the model has only 12"):
        validate_circuit(c, 12, 12)


@pytest.mark.parametrize("bad", [{"END": ["head5"]}, {"MID": ["5.1"]}, {"END": ["5.1", "a5.h1"]}])
def test_malformed_circuits(bad):
    with pytest.raises(UserError):
        circuit_from_dict({"name": "x", "components": bad}, "x")


def test_cli_circuit_with_missing_head_exits_2(capsys, tmp_path, monkeypatch):
    from helpers import tiny_bridge

    import clt_bench.models as models
    from clt_bench.cli import main
    from clt_bench.models.sources import LoadedModel
    from clt_bench.models.tokenizer import gpt2_tokenizer

    monkeypatch.setattr(
        models,
        "load_model",
        lambda *a, **k: LoadedModel("tiny", tiny_bridge(n_layer=2, n_head=2), gpt2_tokenizer()),
    )
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "bad", "components": {"END": ["1.7", "mlp0"]}}))
    code = main(["baseline", "--circuit", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: circuit 'bad' names a1.h7@END") and "\n" not in err
    code = main(["baseline", "--circuit", "hanna2024", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown circuit 'hanna2024'" in err
