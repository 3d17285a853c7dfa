"""Target attributions, interventions, graph JSON round trip, PNG, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _graphs_helpers import make_clt, tiny_loaded
from circuit_tracer_schema import FEATURE_TYPES
from circuit_tracer_schema import Metadata as ViewerMetadata
from circuit_tracer_schema import Model as ViewerGraph

from clt_bench.cli import main
from clt_bench.config import GraphsConfig
from clt_bench.errors import UserError
from clt_bench.graphs import build_graph, build_replacement, target_attributions
from clt_bench.graphs.build import target_attributions_many
from clt_bench.graphs.draw import draw_graph
from clt_bench.graphs.export import read_graph_json, write_graph_json
from clt_bench.graphs.interventions import (
    Intervention,
    constrained_patch,
    free_patch,
    parse_intervention,
)
from clt_bench.graphs.stage import slugify
from clt_bench.graphs.targets import answer_targets, directions, parse_yy

TOKENS = torch.tensor([50256, 464, 1175, 15436, 422, 262, 614, 1596, 1157, 284, 262, 614, 1596])


@pytest.fixture(scope="module")
def setup():
    loaded = tiny_loaded(3, 16, 2, torch.float64)
    clt = make_clt(loaded, TOKENS, "jumprelu", skip=True, n_features=16)
    targets = answer_targets(loaded.tokenizer, 50257)[10:14]
    graph = build_graph(loaded, clt, TOKENS, targets, GraphsConfig(batch_size=16, zero_bos=False))
    return loaded, clt, graph


def test_total_attributions_are_path_sums_of_the_graph(setup):
    loaded, clt, g = setup
    D = directions(g.targets)
    ta = target_attributions(loaded, clt, TOKENS, D, batch_size=3, mode="total")
    o, nf = g.offsets(), g.n_features
    A = g.adjacency
    N = torch.diag(1.0 / g.feature_values)  # linearised features: a = h
    AFF, AF = A[:nf, :nf], A[:nf, : o["target"]]
    total_F = torch.linalg.solve(torch.eye(nf, dtype=torch.float64) - AFF @ N, AF)
    Y = A[o["target"] :, : o["target"]]
    total_Y = Y + Y[:, :nf] @ N @ total_F
    torch.testing.assert_close(ta.values, total_Y, atol=1e-8, rtol=1e-6)
    # completeness of the total decomposition: sources that are not features + constant
    nonfeat = ta.values[:, ~ta.feature_mask].sum(1) + ta.constant
    torch.testing.assert_close(nonfeat, ta.target_values, atol=1e-8, rtol=0)
    direct = target_attributions(loaded, clt, TOKENS, D, mode="direct")
    torch.testing.assert_close(direct.values, Y, atol=1e-10, rtol=1e-8)


def test_many_prompts_match_one_at_a_time(setup):
    loaded, clt, _ = setup
    toks = torch.stack([TOKENS, TOKENS.flip(0), TOKENS.roll(3)])
    D = torch.zeros(3, 2, 50257, dtype=torch.float64)
    D[:, 0, 405], D[:, 1, 1157] = 1.0, 1.0
    D[1, 1, 1157] = -2.0  # per-prompt directions
    many = target_attributions_many(loaded, clt, toks, D, batch_size=1, prompts_per_pass=2)
    for i in range(3):
        one = target_attributions(loaded, clt, toks[i], D[i], mode="total")
        torch.testing.assert_close(many[i].values, one.values, atol=1e-10, rtol=1e-8)
        assert torch.equal(many[i].source_index, one.source_index)


def test_constrained_ablation_equals_the_direct_edge(setup):
    loaded, clt, g = setup
    rm = build_replacement(loaded.bridge, clt, TOKENS)
    D = directions(g.targets)
    o = g.offsets()
    for s in range(min(g.n_features, 5)):
        layer, pos, feat = g.features[s].tolist()
        r = constrained_patch(rm, [Intervention(layer, pos, feat, scale=0.0)], D)
        torch.testing.assert_close(r.delta, -g.adjacency[o["target"] :, s], atol=1e-9, rtol=1e-7)
        r2 = constrained_patch(rm, [Intervention(layer, pos, feat, scale=-1.0)], D)
        torch.testing.assert_close(r2.delta, 2 * r.delta, atol=1e-9, rtol=1e-7)
        live = constrained_patch(
            rm, [Intervention(layer, pos, feat, scale=1.0)], D, constrained_layers=[]
        )
        assert live.delta.abs().max() < 1e-9  # recomputed features reproduce the clean run


def test_free_patch(setup):
    loaded, clt, g = setup
    D = directions(g.targets)
    layer, pos, feat = g.features[0].tolist()
    same = free_patch(loaded.bridge, clt, TOKENS, [Intervention(layer, pos, feat, scale=1.0)], D)
    assert same.delta.abs().max() < 1e-10
    off = free_patch(loaded.bridge, clt, TOKENS, [Intervention(layer, pos, feat, value=0.0)], D)
    assert off.delta.abs().max() > 0
    # a feature of the last layer at the last position reaches the logits only directly: the
    # free effect equals the direct edge up to the (unfrozen) final LayerNorm
    last = [
        i
        for i in range(g.n_features)
        if g.features[i, 0] == g.n_layers - 1 and g.features[i, 1] == g.n_pos - 1
    ]
    if last:
        lyr, p, f = g.features[last[0]].tolist()
        r = free_patch(loaded.bridge, clt, TOKENS, [Intervention(lyr, p, f, scale=0.0)], D)
        edge = -g.adjacency[g.offsets()["target"] :, last[0]]
        assert (r.delta - edge).abs().max() <= 0.5 * edge.abs().max()


def test_graph_json_validates_against_circuit_tracers_viewer_schema(setup, tmp_path):
    _, _, g = setup
    data = json.loads(write_graph_json(g, tmp_path / "g.json", scan="tiny-clt").read_text())
    graph = ViewerGraph.model_validate(data)
    ViewerMetadata.model_validate(data["metadata"])  # what graph-metadata.json lists
    assert {n.feature_type for n in graph.nodes} <= FEATURE_TYPES
    ids = [n.node_id for n in graph.nodes]
    assert len(set(ids)) == len(ids) and len({n.jsNodeId for n in graph.nodes}) == len(ids)
    assert all(e.source in ids and e.target in ids for e in graph.links)
    assert sum(n.is_target_logit for n in graph.nodes) >= 1
    # the check can fail: a layer written as a number, a link without weight
    bad = json.loads(json.dumps(data))
    bad["nodes"][0]["layer"] = 0
    with pytest.raises(ValueError):
        ViewerGraph.model_validate(bad)
    bad = json.loads(json.dumps(data))
    del bad["links"][0]["weight"]
    with pytest.raises(ValueError):
        ViewerGraph.model_validate(bad)


def test_json_round_trip_and_png(setup, tmp_path):
    _, _, g = setup
    path = write_graph_json(g, tmp_path / "g.json", scan="tiny-clt")
    data = json.loads(path.read_text())
    assert {"metadata", "qParams", "nodes", "links"} <= set(data)
    assert data["metadata"]["prompt_tokens"] == g.token_strings
    kinds = {n["feature_type"] for n in data["nodes"]}
    assert {"embedding", "logit"} <= kinds
    ids = {n["node_id"] for n in data["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    back = read_graph_json(path)
    assert back.scores == g.scores

    # every kept node comes back, and only those (the file holds only the kept features, so
    # nodes are compared by identity: kind, layer, position, feature)
    def kept(graph):
        return {
            tuple(graph.describe(i)[k] for k in ("kind", "layer", "pos", "feature"))
            for i in graph.node_mask.nonzero()[:, 0].tolist()
        }

    assert g.node_mask.any() and not g.node_mask.all()
    assert kept(back) == kept(g)
    assert back.n_features == int(g.node_mask[: g.n_features].sum())
    assert len(data["links"]) == int(g.edge_mask.sum()) == int(back.edge_mask.sum())
    torch.testing.assert_close(
        back.adjacency[back.edge_mask].sort().values, g.adjacency[g.edge_mask].sort().values
    )
    png = draw_graph(g, tmp_path / "g.png")
    import matplotlib.image as mpimg

    img = mpimg.imread(png)  # [h, w, channels] in [0, 1]
    assert img.shape[0] >= 400 and img.shape[1] >= 600
    rgb = img[..., :3]
    non_white = (rgb < 0.9).any(-1).mean()
    assert non_white > 0.01  # drawn, not blank
    assert len(np.unique(rgb.reshape(-1, 3).round(2), axis=0)) > 20  # colours, not one fill


def test_targets_and_bad_input(setup):
    loaded, clt, _ = setup
    assert parse_yy("The war lasted from the year 1711 to the year 17") == 11
    with pytest.raises(UserError):
        parse_yy("no year here")
    with pytest.raises(UserError):
        build_graph(loaded, clt, "two words", ["not one token at all"])
    with pytest.raises(UserError):
        build_graph(loaded, clt, "   ")
    with pytest.raises(UserError):
        parse_intervention("1:2=x0")
    with pytest.raises(UserError):
        constrained_patch(
            build_replacement(loaded.bridge, clt, TOKENS), [Intervention(99, 0, 0, value=1.0)]
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--clt", "/nonexistent/clt"], "does not exist"),
        (["--clt", "random:16", "--node-threshold", "2"], "--node-threshold"),
        (["--clt", "random:16", "--edge-threshold", "0"], "--edge-threshold"),
        (["--clt", "random:16", "--batch-size", "0"], "--batch-size"),
        (["--clt", "random:x"], "must be an integer"),
        (["--clt", "random:16", "--prompt", "   "], "the prompt is empty"),
        (["--clt", "random:16", "--prompt", "The war lasted a long time"], "four-digit year"),
        (
            [
                "--clt",
                "random:16",
                "--prompt",
                "The war lasted from the year 1711 to 17" + " and" * 300,
            ],
            "longer than the model's context",
        ),
        (["--clt", "random:16", "--target", "two words"], "not one token"),
    ],
)
def test_cli_bad_input_exits_2(capsys, extra, message):
    assert main(["attribute", "--model", "toy", *extra]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one sentence


def test_cli_unicode_prompts_get_their_own_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prompts = ["Война длилась с 1711 года до 17", "戦争は1711年から17"]
    for p in prompts:
        assert (
            main(
                [
                    "attribute",
                    "--model",
                    "toy",
                    "--clt",
                    "random:16",
                    "--prompt",
                    p,
                    "--max-features",
                    "8",
                ]
            )
            == 0
        )
    files = sorted((tmp_path / "results" / "toy" / "graphs").glob("*.json"))
    assert len(files) == 2
    assert {json.loads(f.read_text())["metadata"]["prompt"] for f in files} == set(prompts)
    assert slugify(prompts[0]) != slugify(prompts[1])
    assert (
        slugify("The war lasted from the year 1711 to the year 17")
        == "the-war-lasted-from-the-year-1711-to-the-year-17"
    )
    assert slugify("The war!") != slugify("The war?")


def test_run_graphs_stage_writes_outputs(setup, tmp_path):
    from clt_bench.config import load_config
    from clt_bench.graphs.stage import format_graph_report, run_graphs_stage

    loaded, clt, _ = setup
    cfg = load_config("toy")
    result = run_graphs_stage(cfg, loaded, clt, None, tmp_path)
    files = {p.name for p in (tmp_path / "graphs").iterdir()}
    assert {"scores.json", result["graph"], result["drawing"]} <= files
    scores = json.loads((tmp_path / "graphs" / "scores.json").read_text())
    assert 0.0 <= scores["scores"]["completeness"] <= 1.0
    assert abs(scores["targets"][0]["residual"]) < 1e-6
    g = read_graph_json(tmp_path / "graphs" / result["graph"])
    assert "greater-than" in g.targets[0].label
    text = format_graph_report(build_graph(loaded, clt, g.prompt))
    assert "completeness score" in text and "top features" in text
