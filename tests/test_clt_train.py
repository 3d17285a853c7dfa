"""Training: exact resume after a kill, NaN guard, activations from a local file, stream mode,
replacement hooks, bad input -> exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clt_bench.activations.store import CachedBlocks, DataPosition, iter_batches
from clt_bench.cli import main
from clt_bench.clt import train as train_mod
from clt_bench.clt.train import train_clt
from clt_bench.config import load_config
from clt_bench.errors import UserError
from clt_bench.io import save_tensors

L, D = 2, 8


def make_shards(folder: Path, n_shards: int = 4, n: int = 256, seed: int = 0) -> list[Path]:
    """Synthetic activations: y = relu(x A) B per layer, so there is something to learn."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(L, D, 16, generator=g), torch.randn(L, 16, D, generator=g) / 4
    paths = []
    for s in range(n_shards):
        x = torch.randn(n, L, D, generator=g) * 3
        y = torch.einsum("nlf,lfd->nld", torch.relu(torch.einsum("nld,ldf->nlf", x, a)), b)
        paths.append(
            save_tensors(folder / f"shard_{s:05d}.safetensors", {"resid_mid": x, "mlp_out": y})
        )
    return paths


def small_cfg(*extra: str):
    return load_config(
        "toy",
        [
            "clt.n_features=16",
            "clt.n_steps=12",
            "clt.batch_tokens=64",
            "clt.warmup_steps=2",
            "clt.checkpoint_every=5",
            "clt.log_every=1",
            "clt.norm_batches=2",
            "clt.lambda_s=0.01",
            "clt.threads=1",
            "activations.seed=3",
            *extra,
        ],
    )


def _weights(clt) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in clt.state_dict().items()}


def test_batches_are_a_function_of_position(tmp_path):
    src = CachedBlocks(make_shards(tmp_path), window=2, seed=1)
    it = iter_batches(src, 64, seed=5)
    seq = [next(it) for _ in range(12)]  # crosses blocks and an epoch (4 * 256 / 64 = 16/epoch)
    again = iter_batches(src, 64, seed=5, start=seq[6][2])
    for want in seq[7:]:
        got = next(again)
        assert torch.equal(got[0], want[0]) and got[2] == want[2]
    halves = [iter_batches(src, 64, seed=5, rank=r, world=2) for r in range(2)]
    first = [next(h)[0] for h in halves]
    assert torch.equal(torch.cat(first), seq[0][0])
    assert seq[0][2] == DataPosition(0, 0, 1)


def test_stream_blocks_resume_from_position():
    from clt_bench.activations.store import StreamBlocks
    from clt_bench.activations.tokens import TokenRows

    def rows():
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            t = torch.randint(0, 1000, (4, 16), generator=g)
            yield TokenRows(t, torch.ones_like(t, dtype=torch.bool))

    def extract(r):
        x = r.tokens[r.mask].float()[:, None, None].expand(-1, L, D)
        return x, -x

    src = StreamBlocks(rows, n_tokens=1000, buffer_tokens=256, extract=extract)
    it = iter_batches(src, 32, seed=1)
    seq = [next(it) for _ in range(40)]  # 1024 tokens per epoch -> crosses an epoch
    again = iter_batches(src, 32, seed=1, start=seq[9][2])
    for want in seq[10:]:
        got = next(again)
        assert torch.equal(got[0], want[0]) and got[2] == want[2]


@pytest.mark.parametrize("activation", ["jumprelu", "topk"])
def test_resume_after_kill_gives_identical_weights(tmp_path, monkeypatch, activation):
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    cfg = small_cfg(f'clt.activation="{activation}"')
    full = train_clt(cfg, src, L, D, tmp_path / "a")
    real = train_mod.iter_batches

    def dying(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 8:
                raise KeyboardInterrupt  # killed during step 9; last checkpoint at step 5
            yield item

    monkeypatch.setattr(train_mod, "iter_batches", dying)
    with pytest.raises(KeyboardInterrupt):
        train_clt(cfg, src, L, D, tmp_path / "b")
    monkeypatch.setattr(train_mod, "iter_batches", real)
    resumed = train_clt(cfg, src, L, D, tmp_path / "b")
    assert resumed.steps == full.steps == 12
    wa, wb = _weights(full.clt), _weights(resumed.clt)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert torch.equal(full.fired, resumed.fired)
    log = [json.loads(r) for r in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))


def test_nan_guard(tmp_path):
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    with pytest.raises(UserError, match="diverged at step"):
        train_clt(
            small_cfg("clt.lr=1e30", "clt.grad_clip=1e30", "clt.warmup_steps=0"),
            src,
            L,
            D,
            tmp_path / "run",
        )


def _write_corpus(path: Path) -> None:
    docs = [f"In {1700 + i} the city had {i * 37} houses and {i % 7} bridges." for i in range(150)]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    else:
        path.write_text("\n".join(docs) + "\n")


def tiny_loaded(n_layer: int = 2):
    from helpers import tiny_bridge

    from clt_bench.models import LoadedModel
    from clt_bench.models.tokenizer import gpt2_tokenizer

    bridge = tiny_bridge(n_layer=n_layer, n_embd=D * 4)
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return LoadedModel("tiny", bridge, gpt2_tokenizer())


@pytest.mark.parametrize("suffix,mode", [(".jsonl", "cache"), (".txt", "stream")])
def test_local_file_corpus_end_to_end(tmp_path, suffix, mode):
    from clt_bench.clt.circuit_tracer_io import load_clt
    from clt_bench.io import read_json
    from clt_bench.pipeline import run_pipeline

    def run_clt_stage(cfg, loaded, out):  # the activations and clt stages, through the runner
        quiet = {"progress": lambda line: None, "model": loaded}
        run_pipeline(cfg, out, ["activations", "clt"], **quiet)
        return read_json(out / "clt" / "metrics.json")

    corpus = tmp_path / f"corpus{suffix}"
    _write_corpus(corpus)
    field = "body" if suffix == ".jsonl" else "text"
    cfg = small_cfg(
        f'activations.corpus="file:{corpus}"',
        f'activations.text_field="{field}"',
        f'activations.mode="{mode}"',
        "activations.n_tokens=800",
        "activations.eval_tokens=200",
        "activations.shard_tokens=256",
        "activations.shuffle_buffer=512",
        'activations.dtype="float32"',
        "activations.batch_size=8",
        "clt.eval_tokens=200",
        "task.n=20",
    )
    loaded = tiny_loaded()
    m = run_clt_stage(cfg, loaded, tmp_path / "run")
    for key in (
        "nmse",
        "nmse_per_layer",
        "l0",
        "l0_per_layer",
        "dead_fraction",
        "replacement_top1_agreement",
        "kl",
        "ce_loss_recovered",
        "replacement_prob_diff",
        "train_tokens",
        "train_seconds",
        "tokens_per_second",
        "config",
        "versions",
        "git_commit",
    ):
        assert key in m, key
    assert m["train_tokens"] == 12 * 64 and 0 <= m["replacement_top1_agreement"] <= 1
    assert m["activations"]["heldout_tokens"] >= 200
    clt = load_clt(tmp_path / "run" / "clt")
    assert clt.n_layers == 2 and (tmp_path / "run" / "clt" / "training_curves.png").is_file()
    stamp = (tmp_path / "run" / "clt" / "metrics.json").stat().st_mtime_ns
    assert run_clt_stage(cfg, loaded, tmp_path / "run") == m  # resumed
    assert (tmp_path / "run" / "clt" / "metrics.json").stat().st_mtime_ns == stamp
    if mode == "cache":  # score the saved CLT without training: same held-out numbers
        from clt_bench.config import with_section

        loaded_cfg = with_section(cfg, "clt", load=str(tmp_path / "run" / "clt"))
        # (as ``train-clt --load`` does) the held-out rows are all it needs: no shards
        loaded_cfg = with_section(loaded_cfg, "activations", mode="stream")
        m2 = run_clt_stage(loaded_cfg, loaded, tmp_path / "scored")
        assert abs(m2["nmse"] - m["nmse"]) < 1e-5 and m2["train_tokens"] == 0
        assert not list((tmp_path / "scored" / "activations").glob("shard_*"))


def test_replacement_with_zero_clt_equals_zero_ablation():
    from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
    from clt_bench.clt.replacement_hooks import replacement_hooks, zero_mlp_hooks

    loaded = tiny_loaded()
    clt = CrossLayerTranscoder(CLTSpec(2, loaded.d_model, 8, "relu"))
    tokens = torch.randint(0, 50257, (2, 10))
    rep = loaded.bridge.run_with_hooks(tokens, fwd_hooks=replacement_hooks(clt))
    zero = loaded.bridge.run_with_hooks(tokens, fwd_hooks=zero_mlp_hooks(2))
    assert torch.allclose(rep, zero, atol=1e-5)
    assert not torch.allclose(rep, loaded.bridge(tokens), atol=1e-3)


def test_bad_input_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(
        ["train-clt", "--set", f'activations.corpus="file:{empty}"', "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "yields no tokens" in err and err.count("\n") == 0
    code = main(["train-clt", "--set", "clt.bogus=1", "--out", str(tmp_path / "r")])
    assert code == 2 and "unknown config key 'clt.bogus'" in capsys.readouterr().err
    code = main(["train-clt", "--preset", "no-such-preset", "--out", str(tmp_path / "r")])
    assert code == 2 and "unknown preset" in capsys.readouterr().err
    code = main(["train-clt", "--set", 'activations.corpus="file:/no/such.txt"'])
    assert code == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "activation,decoder", [("jumprelu", "dense"), ("jumprelu", "sparse"), ("topk", "sparse")]
)
def test_micro_batches_accumulate_the_whole_batch_step(tmp_path, activation, decoder):
    """clt.micro_batch_tokens splits each step's forward/backward; the weights after training
    equal the one-pass run's to float summation order (the loss is a mean over tokens)."""
    src = CachedBlocks(make_shards(tmp_path / "acts"), window=2, seed=3)
    common = (f'clt.activation="{activation}"', f'clt.decoder="{decoder}"', "clt.n_steps=6")
    one = train_clt(small_cfg(*common), src, L, D, tmp_path / "one")
    # 64 tokens in passes of 24, 24, 16: unequal passes check the token weighting
    micro = train_clt(small_cfg(*common, "clt.micro_batch_tokens=24"), src, L, D, tmp_path / "m")
    wa, wb = _weights(one.clt), _weights(micro.clt)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6, msg=k)
    assert torch.equal(one.fired, micro.fired)
    rows = [
        [json.loads(r) for r in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
        for d in ("one", "m")
    ]
    for ra, rb in zip(*rows, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
        assert rb["l0"] == pytest.approx(ra["l0"], rel=1e-6)


def test_micro_batches_cover_the_batch_once():
    assert train_mod.micro_batches(64, 0) == [(0, 64)]
    assert train_mod.micro_batches(64, 24) == [(0, 24), (24, 48), (48, 64)]
    assert train_mod.micro_batches(64, 100) == [(0, 64)]
