"""Transcoder conventions: position 0 left out, BatchTopK's one inference rule (the threshold
learned in training), the late-training dead fraction, precision and device plumbing."""

from __future__ import annotations

import math

import pytest
import torch
from test_clt_train import D, L, make_shards, small_cfg, tiny_loaded

from clt_bench.activations.extract import extract_activations
from clt_bench.activations.store import CachedBlocks, StreamBlocks, iter_batches
from clt_bench.activations.tokens import TokenRows
from clt_bench.cli import main
from clt_bench.clt import train as train_mod
from clt_bench.clt.circuit_tracer_io import load_clt, save_clt
from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
from clt_bench.clt.quality import reconstruction_metrics
from clt_bench.clt.replacement_hooks import _activate_layer, replacement_hooks, zero_mlp_hooks
from clt_bench.clt.train import precision_context, train_clt
from clt_bench.errors import UserError
from clt_bench.models import check_device, load_model

# ----- position 0 ------------------------------------------------------------------------------


def _rows() -> TokenRows:
    tokens = torch.randint(0, 50257, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1, 6:] = False  # a shorter row
    return TokenRows(tokens, mask)


def test_exclude_bos_drops_exactly_position_0():
    loaded, rows = tiny_loaded(), _rows()
    x, y = extract_activations(loaded.bridge, rows)
    xe, ye = extract_activations(loaded.bridge, rows, exclude_bos=True)
    pos = torch.arange(9).expand(3, 9)[rows.mask]
    assert xe.shape[0] == rows.n_tokens - 3
    assert torch.equal(xe, x[pos != 0]) and torch.equal(ye, y[pos != 0])


def _clt(activation: str = "relu", F: int = 12, seed: int = 0, d: int = D) -> CrossLayerTranscoder:
    g = torch.Generator().manual_seed(seed)
    clt = CrossLayerTranscoder(CLTSpec(L, d, F, activation, k=3))
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        clt.log_threshold.fill_(math.log(0.3))
    return clt


def test_nmse_with_and_without_position_0_are_the_subset_nmses():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, L, D, generator=g), torch.randn(50, L, D, generator=g)
    first = torch.zeros(50, dtype=torch.bool)
    first[::10] = True
    x[first] *= 40  # outliers at position 0
    clt = _clt()
    both = reconstruction_metrics(clt, x, y, first, exclude_bos=True, batch=7)
    rest = reconstruction_metrics(clt, x[~first], y[~first])
    every = reconstruction_metrics(clt, x, y)
    assert both["nmse_without_position_0"] == pytest.approx(rest["nmse"], rel=1e-9)
    assert both["nmse"] == pytest.approx(rest["nmse"], rel=1e-9)
    assert both["nmse_with_position_0"] == pytest.approx(every["nmse"], rel=1e-9)
    assert both["nmse_with_position_0"] > 2 * both["nmse_without_position_0"]
    assert both["l0"] == pytest.approx(rest["l0"]) and both["dead_fraction_tokens"] == 45
    assert both["dead_fraction"] == rest["dead_fraction"]
    # by hand: pooled squared error over pooled variance
    with torch.no_grad():
        y_hat, _ = clt(x[~first])
    yr = y[~first].double()
    want = float((y_hat.double() - yr).pow(2).sum() / (yr - yr.mean(0)).pow(2).sum())
    assert rest["nmse"] == pytest.approx(want, rel=1e-9)


def test_keep_first_leaves_position_0_to_the_model():
    loaded = tiny_loaded()
    clt = _clt(F=16, d=loaded.d_model)
    tokens = torch.randint(0, 50257, (2, 7), generator=torch.Generator().manual_seed(2))
    orig = loaded.bridge(tokens)
    rep = loaded.bridge.run_with_hooks(tokens, fwd_hooks=replacement_hooks(clt, keep_first=True))
    full = loaded.bridge.run_with_hooks(tokens, fwd_hooks=replacement_hooks(clt))
    zero = loaded.bridge.run_with_hooks(tokens, fwd_hooks=zero_mlp_hooks(L, keep_first=True))
    assert torch.allclose(rep[:, 0], orig[:, 0], atol=1e-5)
    assert torch.allclose(zero[:, 0], orig[:, 0], atol=1e-5)
    assert not torch.allclose(full[:, 0], orig[:, 0], atol=1e-3)
    assert not torch.allclose(rep[:, 1:], orig[:, 1:], atol=1e-3)


# ----- BatchTopK ---------------------------------------------------------------------------------


def test_batchtopk_infers_with_the_learned_threshold(tmp_path):
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    cfg = small_cfg('clt.activation="batchtopk"', "clt.k=2")
    seen: list[torch.Tensor] = []
    real = CrossLayerTranscoder.pop_batch_kth

    def spy(self):
        out = real(self)
        seen.append(out.clone())
        return out

    CrossLayerTranscoder.pop_batch_kth = spy
    try:
        res = train_clt(cfg, src, L, D, tmp_path / "run")
    finally:
        CrossLayerTranscoder.pop_batch_kth = real
    clt = res.clt
    assert not clt.training and len(seen) == res.steps and seen[0].shape == (L,)
    ema = seen[0].clone()
    for kth in seen[1:]:
        ema = train_mod.BATCHTOPK_EMA * ema + (1 - train_mod.BATCHTOPK_EMA) * kth
    theta = clt.threshold  # [L, F] the same value for every feature of a layer
    assert torch.allclose(theta, ema[:, None].expand_as(theta), rtol=1e-5)
    # one rule: per token, independent of the batch it is in, the same in the replacement hooks
    x = next(iter_batches(src, 64, seed=9))[0]
    h = clt.pre_activations(x)
    a = clt.activate(h)
    assert torch.equal(clt.activate(h[:5]), a[:5])
    assert torch.equal(a, h * (h > theta))
    for layer in range(L):
        assert torch.equal(_activate_layer(clt, h[:, layer], layer), a[:, layer])
    # the threshold survives the circuit-tracer round trip
    save_clt(clt, tmp_path / "saved")
    back = load_clt(tmp_path / "saved")
    assert not back.training
    assert torch.allclose(back.threshold, theta, rtol=1e-6)


def test_batchtopk_without_threshold_is_user_error(tmp_path):
    from clt_bench.io import load_tensors, save_tensors

    save_clt(_clt("batchtopk"), tmp_path / "c")
    for i in range(L):
        f = tmp_path / "c" / f"W_enc_{i}.safetensors"
        t = {k: v for k, v in load_tensors(f).items() if "threshold" not in k}
        save_tensors(f, t)
    with pytest.raises(UserError, match="no learned threshold"):
        load_clt(tmp_path / "c")


# ----- dead fraction over the last part of training ----------------------------------------------


def test_training_fired_counts_cover_the_last_tenth(tmp_path):
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    cfg = small_cfg("clt.n_steps=20")
    res = train_clt(cfg, src, L, D, tmp_path / "run")
    assert res.fired_tokens == 2 * 64  # ceil(0.1 * 20) steps x 64 tokens
    assert int(res.fired.sum()) <= res.fired_tokens * L * 16
    assert int(res.fired.max()) <= res.fired_tokens


# ----- stream start-up ---------------------------------------------------------------------------


def test_stream_block_0_is_computed_once_for_init_and_training():
    calls: list[int] = []

    def rows():
        for i in range(8):
            t = torch.full((4, 16), i)
            yield TokenRows(t, torch.ones_like(t, dtype=torch.bool))

    def extract(r):
        calls.append(int(r.tokens[0, 0]))
        x = torch.randn(r.n_tokens, L, D)
        return x, -x

    src = StreamBlocks(rows, n_tokens=512, buffer_tokens=128, extract=extract)
    first = next(iter_batches(src, 32, seed=1))
    again = next(iter_batches(src, 32, seed=1))
    assert torch.equal(first[0], again[0])
    assert calls == [0, 1]  # block 0 (rows 0-1) extracted once


# ----- precision ---------------------------------------------------------------------------------


def test_bf16_autocast_keeps_fp32_weights_loss_and_saved_clt(tmp_path):
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    x, y, _ = next(iter_batches(src, 64, seed=0))
    clt = _clt("jumprelu", F=16).train()
    from clt_bench.clt.losses import TrainObjective

    with precision_context("bf16", "cpu"):
        loss, stats, _ = TrainObjective(clt, 1e-4, 4.0)(x, y, 0.01)
        h = x[:, 0] @ clt.W_enc[0].T
    assert h.dtype == torch.bfloat16  # the matmuls run in bf16
    assert loss.dtype == torch.float32 and stats.dtype == torch.float32
    loss.backward()
    assert clt.W_enc.grad.dtype == torch.float32
    res = train_clt(small_cfg('clt.precision="bf16"'), src, L, D, tmp_path / "run")
    assert all(p.dtype == torch.float32 for p in res.clt.parameters())
    save_clt(res.clt, tmp_path / "saved")
    from clt_bench.io import load_tensors

    assert (
        load_tensors(tmp_path / "saved" / "W_dec_0.safetensors")["W_dec_0"].dtype == torch.float32
    )
    fp32 = train_clt(small_cfg(), src, L, D, tmp_path / "run32")
    log = [line for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    log32 = [line for line in (tmp_path / "run32" / "train_log.jsonl").read_text().splitlines()]
    assert log != log32  # bf16 really changed the arithmetic ...
    w, w32 = res.clt.W_enc, fp32.clt.W_enc
    assert float((w - w32).norm() / w32.norm()) < 0.05  # ... but not the training


def test_unknown_precision_is_user_error(tmp_path):
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    with pytest.raises(UserError, match="clt.precision"):
        train_clt(small_cfg('clt.precision="fp8"'), src, L, D, tmp_path / "run")


# ----- devices -----------------------------------------------------------------------------------


def test_cuda_without_gpu_is_one_sentence_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        load_model("toy", "cuda")
    with pytest.raises(UserError, match="unknown device"):
        check_device("gpu")
    for cmd in (["train-clt"], ["run"], ["attribute", "--clt", "random:16"], ["task"]):
        code = main([*cmd, "--device", "cuda", "--out", str(tmp_path / "r")])
        cap = capsys.readouterr()
        err = cap.err.strip()
        assert code == 2 and "no CUDA GPU" in err and err.count("\n") == 0, (cmd, err)
        assert "[1/" not in cap.out, (cmd, cap.out)  # before any stage starts


def test_loaded_clt_goes_to_the_given_device(tmp_path):
    from clt_bench.features.stage import load_run_clt

    save_clt(_clt("jumprelu"), tmp_path / "clt")
    clt = load_run_clt(tmp_path, device="meta")
    assert all(t.device.type == "meta" for t in [*clt.parameters(), *clt.buffers()])
    assert not clt.training
    assert tiny_loaded().device == torch.device("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_and_replacement_match_cpu(tmp_path):
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    cpu = train_clt(small_cfg(), src, L, D, tmp_path / "cpu")
    gpu = train_clt(small_cfg(), src, L, D, tmp_path / "gpu", device="cuda")
    assert gpu.clt.W_enc.device.type == "cuda"
    assert torch.allclose(gpu.clt.W_enc.cpu(), cpu.clt.W_enc, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_bf16_toy_clt_matches_the_fp32_reference_within_its_seed_tolerance(tmp_path):
    """The toy default CLT trained with bf16 autocast (~5 min on 2 cores) lands within the
    bands of the fp32 reference (seed prediction intervals, clt_bench/report/reference_bands.py)."""
    import json
    from pathlib import Path

    ref = json.loads((Path(__file__).parents[1] / "results/reference/toy.json").read_text())
    code = main(
        ["train-clt", "--model", "toy", "--set", 'clt.precision="bf16"', "--out", str(tmp_path)]
    )
    assert code == 0
    m = json.loads((tmp_path / "clt" / "metrics.json").read_text())
    assert m["precision"] == "bf16"
    for key in ("nmse", "l0", "replacement_top1_agreement"):
        want = ref["metrics"][f"clt.{key}"]
        assert want["lo"] <= m[key] <= want["hi"], (key, m[key], want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("decoder", ["dense", "sparse"])
def test_cuda_bf16_micro_batched_training_matches_fp32(tmp_path, decoder):
    """bf16 autocast in passes of 24 tokens on the GPU lands near the fp32 one-pass CPU weights."""
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    extra = (f'clt.decoder="{decoder}"',)
    cpu = train_clt(small_cfg(*extra), src, L, D, tmp_path / "cpu")
    bf16 = small_cfg(*extra, 'clt.precision="bf16"', "clt.micro_batch_tokens=24")
    gpu = train_clt(bf16, src, L, D, tmp_path / "gpu", device="cuda")
    assert gpu.clt.W_dec[0].dtype == torch.float32  # fp32 master weights
    assert torch.allclose(gpu.clt.W_enc.cpu(), cpu.clt.W_enc, atol=3e-2, rtol=3e-2)
