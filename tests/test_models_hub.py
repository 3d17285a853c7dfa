"""A GPT-2 checkpoint in an offline HF cache laid out like the hub: load, task, graph, stage hash.

The checkpoint's tokenizer adds BOS by default (as TransformerLens loads hub tokenizers); the task
adds its own BOS text, so the pipeline's tokenizer must not add another.
"""

from __future__ import annotations

import math

import pytest
import torch
from hub_checkpoint import write_hub_gpt2
from safetensors.torch import load_file

from clt_bench.config import load_config
from clt_bench.models import load_model
from clt_bench.models.hub import is_gpt2
from clt_bench.pipeline import run_pipeline, stage_hash

BOS, THE = 50256, 383  # "<|endoftext|>", " The"


@pytest.fixture
def hub_gpt2(isolated_hf_cache):
    """A small GPT-2-architecture checkpoint cached as the hub's ``gpt2``; returns its snapshot."""
    return write_hub_gpt2(isolated_hf_cache)


def test_hub_tokenizer_would_add_bos(hub_gpt2):
    """Control: the checkpoint's own tokenizer, loaded as TransformerLens loads it, adds BOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hub_gpt2), add_bos_token=True)
    assert tok.encode(" 1711") == [BOS, 1596, 1157]


def test_cached_gpt2_loads_offline_without_bos(hub_gpt2):
    loaded = load_model("gpt2")
    assert loaded.tokenizer.encode(" 1711") == [1596, 1157]  # ' 17' '11', no BOS
    assert loaded.n_layers == 2 and loaded.d_model == 64
    wte = load_file(str(hub_gpt2 / "model.safetensors"))["wte.weight"]
    assert torch.equal(loaded.bridge.original_model.transformer.wte.weight, wte)
    by_path = load_model(f"hf:{hub_gpt2}")
    assert by_path.tokenizer.encode(" 1711") == [1596, 1157]
    assert not is_gpt2(f"hf:{hub_gpt2}")  # GPT-2's tokenizer, but not GPT-2 small's shape


def test_cached_gpt2_task_stage_and_graph(hub_gpt2, tmp_path):
    from clt_bench import build_graph
    from clt_bench.graphs.random_clt import random_clt

    cfg = load_config(
        "toy", ['model.name="gpt2"', "task.family_n=0", "task.n=64", "baseline.n_examples=8"]
    )
    ctx = run_pipeline(cfg, tmp_path / "run", stages=["task"], progress=lambda line: None)
    task = ctx.results["task"]
    assert task["n_examples"] == 64  # the year filter keeps years: ' 17' '11' is two tokens
    assert abs(task["prob_diff"]) < 0.05  # random weights do not do the task
    loaded = ctx.model
    clt = random_clt(loaded.n_layers, loaded.d_model, 16, seed=0)
    graph = build_graph(loaded, clt, "The war lasted from the year 1711 to the year 17")
    tokens = graph.tokens.tolist()
    assert tokens[:2] == [BOS, THE] and tokens.count(BOS) == 1
    assert graph.scores and all(math.isfinite(v) for v in graph.scores.values())


def test_other_weights_change_the_stage_hash(hub_gpt2, isolated_hf_cache):
    cfg = load_config("toy", ['model.name="gpt2"'])
    by_path = load_config("toy", [f'model.name="hf:{hub_gpt2}"'])
    before = {s: stage_hash(cfg, s) for s in ("task", "clt")}
    before_path = stage_hash(by_path, "task")
    assert {s: stage_hash(cfg, s) for s in ("task", "clt")} == before  # stable
    write_hub_gpt2(isolated_hf_cache, seed=1)  # same name, same commit, other weights
    after = {s: stage_hash(cfg, s) for s in ("task", "clt")}
    assert all(after[s] != before[s] for s in before)
    assert stage_hash(by_path, "task") != before_path


def test_gpt2_defaults_to_hannas_circuit(hub_gpt2):
    assert load_config("toy", ['model.name="gpt2"']).baseline.circuit == "hanna2023"
    assert load_config("gpt2").baseline.circuit == "hanna2023"
    explicit = load_config("gpt2", ['baseline.circuit="discovered"'])
    assert explicit.baseline.circuit == "discovered"  # discovery stays one override away
    for other in ("toy", "gpt2-random", f"hf:{hub_gpt2}"):  # not GPT-2 small
        assert load_config("toy", [f'model.name="{other}"']).baseline.circuit == "discovered"


def test_run_circuit_flag(tmp_path):
    from clt_bench.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--circuit", "acdc", "--out", str(tmp_path)])
    assert config_from_args(args).baseline.circuit == "acdc"


@pytest.mark.slow
def test_full_size_local_snapshot_is_gpt2(isolated_hf_cache):
    """A local snapshot of GPT-2 small's shape and tokenizer is GPT-2: Hanna's circuit is the
    default and the published circuits are compared (~500 MB in a temporary folder)."""
    from clt_bench.baseline.circuit_overlap import model_identity, published_applies
    from clt_bench.baseline.circuits import load_circuit

    snap = write_hub_gpt2(
        isolated_hf_cache, n_layer=12, n_head=12, n_embd=768, n_positions=1024, repo="local/gpt2"
    )
    name = f"hf:{snap}"
    assert is_gpt2(name) and model_identity(name) == "gpt2"
    assert published_applies(load_circuit("hanna2023"), name)
    assert load_config("toy", [f'model.name="{name}"']).baseline.circuit == "hanna2023"
    loaded = load_model(name)
    assert loaded.tokenizer.encode(" 1711") == [1596, 1157]
    assert not is_gpt2("gpt2-random")
