"""Config values are checked when the config loads: bad choices and ranges end with exit code 2,
one sentence on stderr and no stage directory, before any stage runs."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from clt_bench import config as C
from clt_bench.cli import build_parser, config_from_args, main
from clt_bench.errors import UserError

SECTIONS = {
    "model": C.ModelConfig,
    "task": C.TaskConfig,
    "baseline": C.BaselineConfig,
    "activations": C.ActivationsConfig,
    "clt": C.CLTConfig,
    "graphs": C.GraphsConfig,
    "features": C.FeaturesConfig,
    "plt": C.PLTConfig,
}

# one bad value (a TOML literal) for every field with a choice or a range
BAD: dict[str, str] = {
    "model.name": '"gpt3"',
    "model.device": '"gpu"',
    "model.dtype": '"float8"',
    "task.task": '"less_than_nothing"',
    "task.template": '"nope"',
    "task.dataset": '"nope"',
    "task.n": "-1",
    "task.seed": "-2",
    "task.batch_size": "0",
    "task.family_n": "-1",
    "graphs.share_prompts": "-1",
    "features.mult5_corr": "1.5",
    "features.partial_corr": "-1.5",
    "features.gated_yy_fraction": "1.2",
    "features.interaction_top": "-1",
    "features.curve_candidates": "-1",
    "features.curve_bootstrap": "-1",
    "features.family_features": "-1",
    "baseline.circuit": '"no_such_circuit"',
    "baseline.n_examples": "0",
    "baseline.discovery_examples": "0",
    "baseline.batch_size": "0",
    "baseline.head_threshold": "-0.1",
    "baseline.mlp_threshold": "-0.1",
    "baseline.max_steps": "-1",
    "baseline.n_random": "-1",
    "baseline.top_neurons": "0",
    "baseline.neuron_layer": "-2",
    "baseline.neuron_candidates": "0",
    "baseline.neuron_examples": "0",
    "baseline.curve_dense": "0",
    "activations.corpus": '"wikipedia"',
    "activations.n_tokens": "0",
    "activations.eval_tokens": "0",
    "activations.seq_len": "1",
    "activations.batch_size": "0",
    "activations.shard_tokens": "0",
    "activations.shuffle_buffer": "0",
    "activations.mode": '"disk"',
    "activations.dtype": '"int8"',
    "clt.kind": '"sae"',
    "clt.n_features": "-5",
    "clt.activation": '"foo"',
    "clt.k": "0",
    "clt.lr": "-1",
    "clt.batch_tokens": "0",
    "clt.n_steps": "0",
    "clt.warmup_steps": "-1",
    "clt.decay_start": "1.5",
    "clt.grad_clip": "0",
    "clt.lambda_s": "-1e-3",
    "clt.sparsity_ramp": "-0.5",
    "clt.lambda_p": "-1",
    "clt.tanh_c": "0",
    "clt.threshold_init": "-0.1",
    "clt.bandwidth": "0",
    "clt.init_rate": "1.0",
    "clt.dec_init_scale": "0",
    "clt.norm_batches": "0",
    "clt.checkpoint_every": "0",
    "clt.log_every": "0",
    "clt.eval_tokens": "0",
    "clt.parallel": '"tp"',
    "clt.threads": "-1",
    "clt.precision": '"fp16"',
    "clt.decoder": '"csr"',
    "clt.micro_batch_tokens": "-1",
    "clt.fuse": '"triton"',
    "clt.load": '"/no/such/clt/dir"',
    "graphs.node_threshold": "2",
    "graphs.edge_threshold": "0",
    "graphs.n_prompts": "0",
    "graphs.max_feature_nodes": "-1",
    "graphs.batch_size": "0",
    "graphs.target": '""',
    "graphs.logit_probability": "1.5",
    "graphs.max_logits": "0",
    "graphs.top_features": "-1",
    "features.top_k": "0",
    "features.n_plots": "-1",
    "features.n_contexts": "-1",
    "features.heatmap_mode": '"both"',
    "features.ablation_prompts": "-1",
    "features.prompts_per_pass": "0",
    "features.curve_dense": "0",
    "features.gt_corr": "1.5",
    "features.anti_corr": "-2",
    "features.large_zz_corr": "2",
    "features.parity_corr": "-1.01",
    "features.narrow_yy_fraction": "1.1",
}
# the [plt] section has the [clt] fields and checks (its kind must be "plt")
BAD.update({"plt." + k[4:]: v for k, v in BAD.items() if k.startswith("clt.")})
BAD["plt.kind"] = '"clt"'

# the edges of the ranges are accepted
GOOD_EDGES = [
    "graphs.node_threshold=1",
    "graphs.edge_threshold=1.0",
    "clt.decay_start=0",
    "clt.sparsity_ramp=1",
    "task.seed=-1",
    "task.n=0",
    "baseline.neuron_layer=-1",
    "features.gt_corr=-1",
    "features.anti_corr=1",
    "clt.threads=0",
    'model.name="hf:gpt2"',
    'model.device="cuda:1"',
    'activations.corpus="hf:wikitext:wikitext-2-raw-v1"',
    'baseline.circuit="hanna2023"',
    'clt.activation="batchtopk"',
    'model.dtype="bfloat16"',
]


def _choice_and_range_keys() -> set[str]:
    keys = set()
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if typing.get_origin(hints[f.name]) is typing.Literal:
                keys.add(f"{section}.{f.name}")
        keys |= {f"{section}.{name}" for name in cls.config_ranges}
    return keys


def test_every_choice_and_range_has_a_bad_value_below():
    missing = sorted(_choice_and_range_keys() - set(BAD))
    assert not missing, f"add a bad value for {missing} to BAD"


@pytest.mark.parametrize("key", sorted(BAD))
def test_bad_value_fails_on_load_before_any_stage(key, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--out", str(out), "--set", f"{key}={BAD[key]}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and err.endswith(".")
    assert not out.exists()  # no stage ran, not even the run directory was made


@pytest.mark.parametrize("override", GOOD_EDGES)
def test_values_at_the_edge_of_a_range_load(override):
    C.load_config("toy", [override])


def test_issue_examples_name_the_key():
    for override, words in [
        ("clt.lr=-1", "'clt.lr' must be > 0"),
        ("clt.n_features=-5", "'clt.n_features' must be >= 1"),
        ('clt.activation="foo"', "'clt.activation' must be one of"),
        ("graphs.node_threshold=2", "'graphs.node_threshold' must be in (0, 1]"),
    ]:
        with pytest.raises(UserError, match=None) as info:
            C.load_config("toy", [override])
        assert words in str(info.value)


def test_direct_construction_is_checked_too():
    with pytest.raises(UserError, match="clt.lr"):
        C.CLTConfig(lr=0.0)
    with pytest.raises(ValueError):  # UserError is a ValueError for library callers
        C.GraphsConfig(node_threshold=0.0)
    with pytest.raises(UserError, match="features.heatmap_mode"):
        C.FeaturesConfig(heatmap_mode="both")  # type: ignore[arg-type]


def test_shipped_presets_load():
    for name in C.preset_names():
        C.load_config(name)


def test_literal_choices_match_the_code_that_reads_them():
    from clt_bench.activations.stage import STORE_DTYPES
    from clt_bench.clt.model import ACTIVATIONS
    from clt_bench.clt.train import KINDS
    from clt_bench.models.sources import DTYPES

    def choices(cls: type, name: str) -> set[str]:
        return set(typing.get_args(typing.get_type_hints(cls)[name]))

    assert choices(C.CLTConfig, "activation") == set(ACTIVATIONS)
    assert choices(C.CLTConfig, "kind") == set(KINDS)
    assert choices(C.ModelConfig, "dtype") == set(DTYPES)
    assert choices(C.ActivationsConfig, "dtype") == set(STORE_DTYPES)


def _args(*argv: str):
    return build_parser().parse_args(["run", *argv])


def test_model_flag_and_set_model_name_must_agree(tmp_path, capsys):
    rc = main(["run", "--out", str(tmp_path / "r"), "--model", "toy", "--set", 'model.name="gpt2"'])
    err = capsys.readouterr().err
    assert rc == 2 and "--model toy conflicts with --set model.name=gpt2" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="--device cpu conflicts"):
        config_from_args(_args("--device", "cpu", "--set", 'model.device="cuda"'))
    # the same value twice is not a conflict
    assert config_from_args(_args("--model", "toy", "--set", "model.name=toy")).model.name == "toy"


def test_a_model_with_its_own_preset_runs_it_unless_a_preset_is_named():
    planted = config_from_args(_args("--model", "planted"))
    assert (planted.preset, planted.model.name) == ("planted", "planted")
    assert planted.features.interaction_top == 10 and planted.task.family_n == 24
    named = config_from_args(_args("--model", "planted", "--preset", "toy"))
    assert (named.preset, named.model.name) == ("toy", "planted")
    other = config_from_args(_args("--model", "gpt2-random"))
    assert (other.preset, other.model.name) == ("toy", "gpt2-random")
    default = config_from_args(_args())  # neither flag: the planted model, known circuit
    assert (default.preset, default.model.name) == ("planted", "planted")
    toy = config_from_args(_args("--model", "toy"))
    assert (toy.preset, toy.model.name) == ("toy", "toy")
