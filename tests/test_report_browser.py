"""The report as a reader sees it: headless Chromium loads it, every image decodes, nothing
sticks out past the page, there is a table of contents, and it is readable at a laptop's and a
desktop's width (no word broken inside, no row taller than three lines, text >= 14 px, figure
text >= 10 px as displayed); plus the bootstrap intervals it shows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from clt_bench.config import load_config
from clt_bench.io import save_tensors
from clt_bench.pipeline import stage_hash
from clt_bench.plots import yy_zz_grid, yy_zz_heatmap
from clt_bench.report.browser import (
    check_report,
    drive_report,
    find_chromium,
    screenshot_sections,
)
from clt_bench.report.stage import write_report

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed")


LABELS = ["comparator", "range comparator", "other"]
TOKENS = ["<|endoftext|>", " The", " war", " lasted", " from", " 17", "32", " to", " 17"]


def synthetic_graph(features: list[str]) -> dict:
    """A pruned graph in circuit-tracer's JSON format (as graphs/export.py writes it): tokens,
    the given transcoder features at the last two positions, an error node, the target, and
    edges tokens -> features -> target with weights 1, 2, 3, ..."""
    n_pos = len(TOKENS)

    def node(node_id, layer, pos, kind, influence, raw):
        return {
            "node_id": node_id,
            "feature": 0,
            "layer": str(layer),
            "ctx_idx": pos,
            "feature_type": kind,
            "jsNodeId": node_id,
            "influence": influence,
            "activation": 1.0,
            "raw_influence": raw,
        }

    nodes = [node(f"E_{100 + p}_{p}", "E", p, "embedding", 0.9, 0.01) for p in range(n_pos)]
    for k, f in enumerate(features):
        layer, idx = f[1:].split("/")
        pos = n_pos - 1 - k % 2
        nodes.append(
            node(
                f"{layer}_{idx}_{pos}",
                layer,
                pos,
                "cross layer transcoder",
                0.1 * (k + 1),
                1.0 / (k + 1),
            )
        )
    nodes.append(node(f"1_-1_{n_pos - 1}", 1, n_pos - 1, "mlp reconstruction error", 0.5, 0.1))
    nodes.append(node(f"3_7_{n_pos - 1}", 3, n_pos - 1, "logit", 0.0, 1.0))
    feats = [n["node_id"] for n in nodes if n["feature_type"] == "cross layer transcoder"]
    links, w = [], 0.0
    for fid in feats:
        for src in (f"E_{100 + n_pos - 1}_{n_pos - 1}", f"E_{100 + 6}_6"):
            w += 1.0
            links.append({"source": src, "target": fid, "weight": w})
        w += 1.0
        links.append({"source": fid, "target": f"3_7_{n_pos - 1}", "weight": -w})
    return {
        "metadata": {
            "slug": "a-prompt",
            "scan": "test",
            "transcoder_list": [],
            "prompt_tokens": TOKENS,
            "prompt": "The war lasted from 1732 to 17",
            "node_threshold": 0.8,
            "clt_bench": {"n_layers": 2},
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report over a synthetic run: heatmaps, a per-family grid, a families table with long
    text, a wide features table with a heatmap and pair interactions, an attribution graph,
    per-prompt PD values."""
    run = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    (run / "task").mkdir()
    yy_zz_heatmap(rng.random((97, 100)), run / "task" / "heatmap.png", "p(ZZ | YY)")
    grid = {f"family {i}": rng.random((97, 100)) for i in range(8)}
    yy_zz_grid(grid, run / "task" / "families_heatmap.png", "p(ZZ | YY) per family")
    pd.DataFrame(
        {
            "family": [f"family {i}" for i in range(17)],
            "template": ["The {noun} lasted from the year {XX}{YY} to the year {XX}"] * 17,
            "example_prompt": ["The war lasted from the year 1732 to the year 17"] * 17,
            **{f"metric_{i}": rng.random(17) for i in range(12)},
        }
    ).to_csv(run / "task" / "families.csv", index=False)
    pd_values = rng.normal(0.8, 0.2, size=200)
    save_tensors(
        run / "task" / "per_prompt.safetensors", {"prob_diff": torch.from_numpy(pd_values)}
    )
    (run / "features").mkdir()
    ids = [f"L{i % 2}/{10 + i}" for i in range(50)]
    wide = pd.DataFrame(
        {
            "rank": range(1, 51),
            "feature": ids,
            "label": [LABELS[i % 3] for i in range(50)],
            "runner_up": [LABELS[(i + 1) % 3] for i in range(50)],
            "runner_up_score": rng.random(50),
            "influence": rng.random(50) * 10,
            **{f"column_with_a_long_name_{i}": rng.random(50) for i in range(30)},
        }
    )
    wide["contexts"] = ["a very long context string " * 20] * 50
    wide.to_csv(run / "features" / "features.csv", index=False)
    yy_zz_heatmap(rng.random((97, 100)), run / "features" / "heatmap_001_L0_F10.png", "L0/10")
    pairs = [(ids[a], ids[b]) for a in range(4) for b in range(a + 1, 4)]
    pd.DataFrame(
        {
            "feature_a": [a for a, _ in pairs],
            "feature_b": [b for _, b in pairs],
            "dpd_a": rng.random(len(pairs)),
            "dpd_b": rng.random(len(pairs)),
            "dpd_pair": rng.random(len(pairs)),
            "residual": rng.random(len(pairs)),
        }
    ).to_csv(run / "features" / "interactions.csv", index=False)
    (run / "graphs").mkdir()
    (run / "graphs" / "a-prompt.json").write_text(json.dumps(synthetic_graph(ids[:6])))
    results = {
        "task": {"prob_diff": float(pd_values.mean()), "n_examples": 200},
        "features": {"n_comparator": 3},
    }
    cfg = load_config("toy")
    hashes = {"report": stage_hash(cfg, "report")}  # the runner's, as the report starts
    ctx = SimpleNamespace(cfg=cfg, run_dir=run, results=results, hashes=hashes)
    write_report(ctx)
    return run


def test_headline_gets_a_seeded_bootstrap_interval_over_prompts(report):
    metrics = json.loads((report / "metrics.json").read_text())
    lo, hi = metrics["headline_ci"]["task.prob_diff"]
    mean = metrics["headline"]["task.prob_diff"]
    assert lo < mean < hi and 0.01 < hi - lo < 0.1  # ~ 2 x 1.96 x 0.2 / sqrt(200) = 0.055
    assert "features.n_comparator" not in metrics["headline_ci"]  # no per-prompt values: none
    assert "bootstrap" in metrics["headline_ci_method"]
    assert f"[{lo:.3g}, {hi:.3g}]" in (report / "report.html").read_text()  # 3 digits


@needs_chromium
def test_report_renders_in_chromium(report):
    shot = report / "report_top.png"
    result = check_report(report / "report.html", screenshot=shot)
    assert result["images"] >= 1 and result["broken"] == []
    assert result["overflow"] == [] and result["scroll_width"] <= result["client_width"]
    assert result["toc"] >= 3
    assert shot.stat().st_size > 10_000


@needs_chromium
@pytest.mark.parametrize("width", [1280, 1920])
def test_report_is_readable_at_laptop_and_desktop_width(report, width):
    result = check_report(report / "report.html", width=width)
    assert result["figures"] >= 2
    problems = {k: result[k] for k in ("broken_words", "tall_rows", "small_text", "small_figures")}
    counts = f"{result['n_broken_words']} words broken, {result['n_tall_rows']} rows too tall"
    assert problems == dict.fromkeys(problems, []), counts


@needs_chromium
def test_browser_check_catches_broken_images_and_overflow(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><img src='missing.png' alt='gone'>"
        "<div style='width:3000px'>wide</div></body></html>"
    )
    result = check_report(page)
    assert result["broken"] == ["gone"] and result["overflow"] and result["toc"] == 0


@needs_chromium
def test_readability_check_catches_broken_words_tall_rows_small_text_and_figures(tmp_path):
    fig = tmp_path / "fig.png"
    yy_zz_heatmap(np.random.default_rng(0).random((97, 100)), fig, "p(ZZ | YY)")
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body style='font-size:16px'><table style='width:600px;table-layout:fixed'><tr><td "
        "style='width:40px;overflow-wrap:anywhere'>"
        "unbreakable_metric_name</td><td>" + "many words " * 60 + "</td></tr></table>"
        "<p style='font-size:11px'>tiny</p><img src='fig.png' alt='fig' style='width:150px'>"
        "<img src='fig.png' alt='big' style='width:700px'></body></html>"
    )
    result = check_report(page, width=1280)
    assert any("unbreakable_metric_name" in w for w in result["broken_words"])
    assert not any("many" in w for w in result["broken_words"])  # wrapped between words: fine
    assert len(result["tall_rows"]) == 1
    assert result["small_text"] == ["p 11px"]
    assert result["figures"] == 2 and len(result["small_figures"]) == 1
    assert result["small_figures"][0].startswith("fig ")


@needs_chromium
def test_features_table_sorts_and_a_graph_node_opens_its_feature(report):
    """Sort the features table, click a graph node, read the detail pane -- in the page."""
    features = pd.read_csv(report / "features" / "features.csv")
    graph = json.loads((report / "graphs" / "a-prompt.json").read_text())
    result = drive_report(
        report / "report.html",
        """
        const th = [...document.querySelectorAll('#tbl-features thead th')]
          .find(h => h.textContent === 'influence');
        th.click();
        const down = [...document.querySelectorAll('#tbl-features tbody tr')]
          .map(r => r.dataset.id);
        th.click();
        const up = document.querySelector('#tbl-features tbody tr').dataset.id;
        const filter = document.querySelector('input.filter[data-for=tbl-features]');
        filter.value = 'range comparator';
        filter.dispatchEvent(new Event('input'));
        const kept = [...document.querySelectorAll('#tbl-features tbody tr')]
          .filter(r => !r.hidden).length;
        const node = document.querySelector('#graph circle[data-feature="L1/11"]');
        node.dispatchEvent(new MouseEvent('click', {bubbles: true}));
        const pane = document.querySelector('#detail');
        const edges = document.querySelector('#graph').dataset.selectedEdges;
        const slider = document.querySelector('#edge-threshold');
        slider.value = '0.5';
        slider.dispatchEvent(new Event('input'));
        return {down, up, kept, detail: pane.dataset.feature, text: pane.textContent,
                edges: +edges, edges_high: +document.querySelector('#graph').dataset.selectedEdges,
                nodes: document.querySelectorAll('#graph circle.node').length};
        """,
    )
    assert "error" not in result, result
    by_influence = features.sort_values("influence", ascending=False)["feature"].tolist()
    assert result["down"] == by_influence and result["up"] == by_influence[-1]
    rc = (features["label"] == "range comparator") | (features["runner_up"] == "range comparator")
    assert result["kept"] == int(rc.sum())  # the filter reads every cell of a row
    assert result["nodes"] == len(graph["nodes"])
    assert result["detail"] == "L1/11"
    row = features.set_index("feature").loc["L1/11"]
    assert f"L1/11: {row['label']}" in result["text"] and row["runner_up"] in result["text"]
    assert "Pair interactions" in result["text"] and "L0/10" in result["text"]
    # L1/11's edges: two in (weights 4, 5) and one out (-6) of max |weight| 18
    weights = [abs(e["weight"]) for e in graph["links"] if "1_11_" in e["source"] + e["target"]]
    top = max(abs(e["weight"]) for e in graph["links"])
    assert result["edges"] == sum(w >= 0.02 * top for w in weights) == 3
    assert result["edges_high"] == sum(w >= 0.5 * top for w in weights) == 0


@needs_chromium
def test_section_screenshots_at_laptop_width(report):
    shots = screenshot_sections(report / "report.html", report / "screenshots", width=1280)
    names = {p.stem for p in shots}
    assert {"sec-headline", "sec-task", "sec-graphs", "sec-features"} <= names
    from PIL import Image

    for p in shots:
        with Image.open(p) as im:
            assert im.width == 1280 and im.height > 100, p


def test_table_cells_three_digits_long_text_on_hover_and_curated_columns():
    from clt_bench.report.tables import LONG_TEXT, shown_columns, table_html

    df = pd.DataFrame(
        {
            "feature": ["L0/1", "L0/2"],
            "influence": [78.652253, 0.000123456],
            "mixed": ["0.695068", "never [191, never]"],
            "contexts": ["x " * LONG_TEXT, "short"],
        }
    )
    page = table_html(df, "tbl-x", shown=["feature", "influence"])
    assert ">78.7<" in page and ">0.000123<" in page and ">0.695<" in page
    assert "data-v='78.652253'" in page  # sorting compares the full value
    assert f"title='{'x ' * LONG_TEXT}'" in page and "…" in page
    # 2 hidden columns: their 2 headers and 2 x 2 cells
    assert page.count("class='more") == 6 and "show all 4 columns" in page
    cols = ["rank", "feature", "label", "influence", "secret"]
    assert shown_columns("features.csv", cols) == ["rank", "feature", "label", "influence"]
    assert shown_columns("other.csv", [f"c{i}" for i in range(30)]) == [f"c{i}" for i in range(10)]
