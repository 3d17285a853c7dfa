"""Documents -> batches of token rows: one document per row (BOS first), split at ``seq_len``.

Rows are right-padded; ``mask`` marks real tokens. Activations are only taken at real tokens, so
padding never reaches the CLT and right padding never changes a causal model's real positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class TokenRows:
    """A batch of rows: ``tokens`` [rows, pos] (long) and ``mask`` [rows, pos] (bool)."""

    tokens: torch.Tensor
    mask: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    @classmethod
    def cat(cls, parts: Sequence[TokenRows], width: int | None = None) -> TokenRows:
        """The batches ``parts`` as one, right-padded to ``width`` (default: the widest)."""
        w = width if width is not None else max(p.tokens.shape[1] for p in parts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, w - t.shape[1]))

        return cls(
            torch.cat([pad(p.tokens) for p in parts]), torch.cat([pad(p.mask) for p in parts])
        )


def document_pieces(ids: list[int], bos_id: int, seq_len: int) -> list[list[int]]:
    """Token ids of one document -> pieces of at most ``seq_len`` (BOS prepended if missing)."""
    if not ids or ids[0] != bos_id:
        ids = [bos_id, *ids]
    return [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]


def _pack(rows: list[list[int]], pad_id: int) -> TokenRows:
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return TokenRows(tokens, mask)


def iter_token_rows(
    docs: Iterable[str], tokenizer: PreTrainedTokenizerBase, seq_len: int, batch_size: int
) -> Iterator[TokenRows]:
    """Batches of ``batch_size`` rows from ``docs``; the last batch may be smaller."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    pending: list[list[int]] = []
    for doc in docs:
        pending.extend(document_pieces(tokenizer.encode(doc), bos, seq_len))
        while len(pending) >= batch_size:
            yield _pack(pending[:batch_size], pad)
            pending = pending[batch_size:]
    if pending:
        yield _pack(pending, pad)


def take_tokens(batches: Iterator[TokenRows], n_tokens: int) -> Iterator[TokenRows]:
    """Batches from ``batches`` until at least ``n_tokens`` real tokens were yielded."""
    seen = 0
    while seen < n_tokens:
        rows = next(batches, None)
        if rows is None:
            return
        seen += rows.n_tokens
        yield rows


def group_tokens(rows: Iterable[TokenRows], n_tokens: int) -> Iterator[list[TokenRows]]:
    """Consecutive batches grouped until each group holds at least ``n_tokens`` real tokens (the
    last group: what is left)."""
    pending: list[TokenRows] = []
    count = 0
    for r in rows:
        pending.append(r)
        count += r.n_tokens
        if count >= n_tokens:
            yield pending
            pending, count = [], 0
    if pending:
        yield pending
