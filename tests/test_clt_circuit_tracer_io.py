"""circuit-tracer format: bit-exact round trips (CLT and per-layer set), wrong shapes -> exit 2."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from clt_bench.cli import main
from clt_bench.clt.circuit_tracer_io import load_clt, save_clt
from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
from clt_bench.errors import UserError
from clt_bench.io import load_tensors, save_tensors


def _random_clt(
    activation: str = "jumprelu", cross: bool = True, skip: bool = False
) -> CrossLayerTranscoder:
    torch.manual_seed(1)
    clt = CrossLayerTranscoder(CLTSpec(3, 6, 10, activation, k=3, cross_layer=cross, skip=skip))
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn_like(p))
        clt.log_threshold.copy_(torch.rand_like(clt.log_threshold).mul(0.3).add(1e-3).log())
    return clt


def _same(a: CrossLayerTranscoder, b: CrossLayerTranscoder) -> None:
    assert a.spec == b.spec
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    "activation,cross,skip",
    [
        ("jumprelu", True, False),
        ("topk", True, True),
        ("jumprelu", False, False),
        ("relu", False, True),
    ],
)
def test_round_trip_bit_exact(tmp_path, activation, cross, skip):
    clt = _random_clt(activation, cross, skip)
    save_clt(clt, tmp_path / "a")
    back = load_clt(tmp_path / "a")
    _same(clt, back)
    save_clt(back, tmp_path / "b")
    for f in sorted((tmp_path / "a").glob("*.safetensors")):
        ta, tb = load_tensors(f), load_tensors(tmp_path / "b" / f.name)
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    x = torch.randn(4, 3, 6)
    assert torch.equal(clt(x)[0], back(x)[0])


def test_circuit_tracer_layout_and_folding(tmp_path):
    clt = _random_clt()
    clt.input_scale.fill_(2.0)
    clt.output_scale.fill_(0.5)
    x = torch.randn(5, 3, 6)
    ref = clt(x)[0]
    save_clt(clt, tmp_path)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert cfg["model_kind"] == "cross_layer_transcoder"
    assert cfg["feature_input_hook"] == "hook_resid_mid"
    assert cfg["feature_output_hook"] == "hook_mlp_out"
    for i in range(3):
        enc = load_tensors(tmp_path / f"W_enc_{i}.safetensors")
        assert enc[f"W_enc_{i}"].shape == (10, 6) and enc[f"b_enc_{i}"].shape == (10,)
        assert enc[f"b_dec_{i}"].shape == (6,) and enc[f"threshold_{i}"].shape == (10,)
        dec = load_tensors(tmp_path / f"W_dec_{i}.safetensors")
        assert dec[f"W_dec_{i}"].shape == (10, 3 - i, 6)
    back = load_clt(tmp_path)
    assert torch.allclose(back(x)[0], ref, atol=1e-5)


def test_foreign_transcoder_set_without_our_extras(tmp_path):
    """A per-layer set as circuit-tracer writes it (threshold only, W_enc [d, F])."""
    torch.manual_seed(0)
    files = []
    for i in range(2):
        t = {
            "W_enc": torch.randn(6, 8),
            "W_dec": torch.randn(8, 6),
            "b_enc": torch.randn(8),
            "b_dec": torch.randn(6),
            "threshold": torch.rand(8) + 0.1,
        }
        save_tensors(tmp_path / f"tc_{i}.safetensors", t)
        files.append(f"tc_{i}.safetensors")
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "activation_function": "jump_relu",
                "feature_input_hook": "hook_resid_mid",
                "feature_output_hook": "hook_mlp_out",
                "transcoders": files,
            }
        )
    )
    plt = load_clt(tmp_path)
    assert not plt.spec.cross_layer and plt.spec.activation == "jumprelu"
    t0 = load_tensors(tmp_path / "tc_0.safetensors")
    x = torch.randn(3, 2, 6)
    pre = x[:, 0] @ t0["W_enc"] + t0["b_enc"]
    a = pre * (pre > t0["threshold"])
    assert torch.allclose(plt(x)[0][:, 0], a @ t0["W_dec"] + t0["b_dec"], atol=1e-4)
    assert math.isclose(float(plt.threshold[0, 0]), float(t0["threshold"][0]), rel_tol=1e-6)


def test_wrong_shape_is_user_error(tmp_path, capsys):
    clt = _random_clt()
    save_clt(clt, tmp_path)
    save_tensors(tmp_path / "W_dec_1.safetensors", {"W_dec_1": torch.zeros(10, 3, 6)})
    with pytest.raises(UserError, match="wrong shape for 'W_dec_1'"):
        load_clt(tmp_path)
    code = main(["train-clt", "--load", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: checkpoint") and err.count("\n") == 0
    with pytest.raises(UserError, match="no config.yaml"):
        load_clt(tmp_path / "nowhere")
