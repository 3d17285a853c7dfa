"""The activations stage: held-out token rows + (cache mode) activation shards on disk.

The corpus stream is split as: the first ``eval_tokens`` tokens are held out (quality metrics of
the CLT, replacement-model agreement), the next ``n_tokens`` are training data. Under torchrun
every rank tokenises the stream and computes the shards ``s`` with ``s % world == rank``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from clt_bench.activations.corpus import iter_documents
from clt_bench.activations.extract import extract_activations
from clt_bench.activations.store import CachedBlocks, StreamBlocks, cat_blocks
from clt_bench.activations.tokens import TokenRows, group_tokens, iter_token_rows, take_tokens
from clt_bench.artifacts import ActivationsManifest, save_manifest
from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.io import load_tensors, run_metadata, save_tensors
from clt_bench.models import LoadedModel

log = logging.getLogger(__name__)
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def store_dtype(cfg: RunConfig) -> torch.dtype:
    return STORE_DTYPES[cfg.activations.dtype]  # a choice the config checked


def corpus_rows(cfg: RunConfig, loaded: LoadedModel) -> Iterator[TokenRows]:
    """The whole corpus as token-row batches (held-out part first, then training)."""
    a = cfg.activations
    docs = iter_documents(a.corpus, a.seed, a.text_field, a.split)
    return iter_token_rows(docs, loaded.tokenizer, a.seq_len, a.batch_size)


def heldout_rows(cfg: RunConfig, loaded: LoadedModel) -> list[TokenRows]:
    rows = list(take_tokens(corpus_rows(cfg, loaded), cfg.activations.eval_tokens))
    if not rows:
        raise UserError(f"corpus '{cfg.activations.corpus}' yields no tokens.")
    return rows


def training_rows(cfg: RunConfig, loaded: LoadedModel) -> Iterator[TokenRows]:
    it = corpus_rows(cfg, loaded)
    for _ in take_tokens(it, cfg.activations.eval_tokens):
        pass
    return take_tokens(it, cfg.activations.n_tokens)


def run_activations_stage(
    cfg: RunConfig, loaded: LoadedModel, out_dir: str | Path
) -> dict[str, Any]:
    """Write ``<out>/activations/``: heldout.safetensors, shards (cache mode), manifest.json."""
    a = cfg.activations
    stage = Path(out_dir) / "activations"
    rank, world = _rank_world()
    t0 = time.perf_counter()
    dtype = store_dtype(cfg)
    held = heldout_rows(cfg, loaded)
    if rank == 0:
        joined = TokenRows.cat(held, a.seq_len)
        save_tensors(stage / "heldout.safetensors", {"tokens": joined.tokens, "mask": joined.mask})
        for old in stage.glob("shard_*.safetensors"):
            old.unlink()  # of an interrupted attempt (it rewrites them all)
    _barrier()
    n_shards, n_train = 0, 0
    if a.mode == "cache":
        bar = tqdm(total=a.n_tokens, desc="activations", unit="tok", disable=rank != 0)
        # a shard is written while the next one is computed (the writer releases the GIL); at
        # most one shard waits in memory
        with ThreadPoolExecutor(max_workers=1) as writer:
            pending: Future[Path] | None = None
            for s, rows in enumerate(group_tokens(training_rows(cfg, loaded), a.shard_tokens)):
                n = sum(r.n_tokens for r in rows)
                n_shards, n_train = s + 1, n_train + n
                if s % world == rank:
                    x, y = cat_blocks(
                        [extract_activations(loaded.bridge, r, dtype, a.exclude_bos) for r in rows]
                    )
                    shard = {"resid_mid": x.cpu(), "mlp_out": y.cpu()}
                    if pending is not None:
                        pending.result()  # raises the writer's error here
                    pending = writer.submit(
                        save_tensors, stage / f"shard_{s:05d}.safetensors", shard
                    )
                bar.update(n)
            if pending is not None:
                pending.result()
        bar.close()
        if n_train == 0:
            raise UserError(
                f"corpus '{a.corpus}' yields no training tokens after the "
                f"{a.eval_tokens} held-out tokens."
            )
    manifest = ActivationsManifest(
        mode=a.mode,
        corpus=a.corpus,
        n_shards=n_shards,
        train_tokens=n_train,
        heldout_tokens=sum(r.n_tokens for r in held),
        n_layers=loaded.n_layers,
        d_model=loaded.d_model,
        dtype=a.dtype,
        seconds=round(time.perf_counter() - t0, 2),
    )
    meta = run_metadata(config=a, seeds={"corpus": a.seed})
    _barrier()
    if rank == 0:
        save_manifest(out_dir, manifest, **meta)
    _barrier()
    log.info("activations stage wrote %s", stage)
    return {**manifest, **meta}


def load_heldout(out_dir: str | Path) -> TokenRows:
    t = load_tensors(Path(out_dir) / "activations" / "heldout.safetensors")
    return TokenRows(t["tokens"], t["mask"])


def training_source(
    cfg: RunConfig, loaded: LoadedModel, out_dir: str | Path
) -> CachedBlocks | StreamBlocks:
    """The block source training reads: cached shards, or activations computed on the fly."""
    a = cfg.activations
    if a.mode == "cache":
        paths = sorted((Path(out_dir) / "activations").glob("shard_*.safetensors"))
        window = max(1, -(-a.shuffle_buffer // a.shard_tokens))
        return CachedBlocks(paths, window, a.seed)
    dtype = store_dtype(cfg)
    return StreamBlocks(
        lambda: training_rows(cfg, loaded),
        a.n_tokens,
        a.shuffle_buffer,
        lambda r: extract_activations(loaded.bridge, r, dtype, a.exclude_bos),
    )
