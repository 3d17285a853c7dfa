"""Activation blocks for training, in a fixed, seeded order (shards on disk or on the fly).

A *block* is a set of tokens' activations shuffled together: a window of cached shards, or the
activations of the next ``shuffle_buffer`` streamed tokens. ``iter_batches`` permutes each block
with a generator seeded by (seed, epoch, block) and cuts it into batches, so a ``DataPosition``
(epoch, block, batch) fully determines what comes next -- the basis of exact resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from clt_bench.activations.tokens import TokenRows, group_tokens, take_tokens
from clt_bench.errors import UserError
from clt_bench.io import load_tensors

Block = tuple[torch.Tensor, torch.Tensor]  # (resid_mid [n, L, d], mlp_out [n, L, d])


@dataclass(frozen=True)
class DataPosition:
    """Where the next batch starts: ``batch`` within ``block`` within ``epoch``."""

    epoch: int = 0
    block: int = 0
    batch: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def cat_blocks(parts: list[Block]) -> Block:
    """(x, y) pairs -> one block: the x and the y concatenated over tokens."""
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(tuple(key)) & (2**62 - 1))


class CachedBlocks:
    """Blocks = windows of ``window`` shards, shard order reshuffled every epoch."""

    def __init__(self, shard_paths: list[Path], window: int, seed: int) -> None:
        if not shard_paths:
            raise UserError("the activation cache holds no shards.")
        self.paths, self.window, self.seed = shard_paths, max(1, window), seed

    def blocks(self, epoch: int, start: int = 0) -> Iterator[tuple[int, Block]]:
        order = torch.randperm(len(self.paths), generator=_generator(self.seed, epoch, -1))
        for b in range(start, math.ceil(len(self.paths) / self.window)):
            parts = [
                load_tensors(self.paths[int(i)])
                for i in order[b * self.window : (b + 1) * self.window]
            ]
            yield b, cat_blocks([(p["resid_mid"], p["mlp_out"]) for p in parts])


class StreamBlocks:
    """Blocks computed on the fly: activations of the next ``buffer_tokens`` streamed tokens.

    ``rows_fn`` returns a fresh token-row iterator (the training part of the corpus, at most
    ``n_tokens``); skipping to a block on resume tokenises but does not run the model.
    """

    def __init__(
        self,
        rows_fn: Callable[[], Iterator[TokenRows]],
        n_tokens: int,
        buffer_tokens: int,
        extract: Callable[[TokenRows], Block],
    ) -> None:
        self.rows_fn, self.n_tokens, self.buffer = rows_fn, n_tokens, buffer_tokens
        self.extract = extract
        # the last block computed: the initialisation reads block 0 and training starts with it,
        # so keeping it saves one block of model forwards at start-up (blocks do not depend on
        # the epoch)
        self._last: tuple[int, Block] | None = None

    def blocks(self, epoch: int, start: int = 0) -> Iterator[tuple[int, Block]]:
        groups = group_tokens(take_tokens(self.rows_fn(), self.n_tokens), self.buffer)
        for b, rows in enumerate(groups):
            if b >= start:
                yield b, self._compute(b, rows)

    def _compute(self, b: int, rows: list[TokenRows]) -> Block:
        if self._last is not None and self._last[0] == b:
            return self._last[1]
        self._last = None  # no second block held while the next one is computed
        block = cat_blocks([self.extract(r) for r in rows])
        self._last = (b, block)
        return block


def iter_batches(
    source: CachedBlocks | StreamBlocks,
    batch_tokens: int,
    seed: int,
    start: DataPosition = DataPosition(),
    rank: int = 0,
    world: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, DataPosition]]:
    """Endless shuffled batches: (x [batch_tokens / world, L, d], y [...], position after it).

    Every rank sees the same global batch order and takes its contiguous slice of each batch, so
    averaging the ranks' gradients equals one process training on the global batch.
    """
    if batch_tokens % world:
        raise UserError(
            f"clt.batch_tokens ({batch_tokens}) must be divisible by the number of "
            f"processes ({world})."
        )
    local = batch_tokens // world
    epoch, first = start.epoch, True
    while True:
        produced = False
        for b, (x, y) in source.blocks(epoch, start.block if first else 0):
            perm = torch.randperm(x.shape[0], generator=_generator(seed, epoch, b))
            n_batches = x.shape[0] // batch_tokens
            for i in range(start.batch if first else 0, n_batches):
                first = False
                idx = perm[i * batch_tokens + rank * local : i * batch_tokens + (rank + 1) * local]
                idx = idx.to(x.device)  # a store kept on the GPU: the (CPU) order goes to it
                produced = True
                # index_select: the same rows as x[idx] in a third of the time (CPU, fp16)
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
                yield xb.to(dtype), yb.to(dtype), DataPosition(epoch, b, i + 1)
            first = False
        if not produced and epoch > start.epoch:
            raise UserError(
                f"the activations hold fewer tokens than one batch ({batch_tokens}); "
                f"raise activations.n_tokens or lower clt.batch_tokens."
            )
        epoch += 1
