"""Hub corpora: refused with one sentence when the hub does not answer, unless offline mode is
set (then the datasets library's local cache is read)."""

from __future__ import annotations

import pytest

from clt_bench.activations import corpus
from clt_bench.errors import UserError


def test_a_hub_corpus_asks_the_configured_endpoint(monkeypatch):
    asked = []

    def reachable(timeout: float = 3.0) -> bool:
        asked.append(timeout)
        return False

    monkeypatch.setattr("clt_bench.models.hub.hub_reachable", reachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(UserError, match="cannot stream FineWeb: the Hugging Face hub is not"):
        corpus.iter_documents("fineweb")
    assert asked


def test_offline_mode_reads_the_cache_without_asking(monkeypatch):
    def reachable(timeout: float = 3.0) -> bool:
        raise AssertionError("offline mode must not probe the network")

    monkeypatch.setattr("clt_bench.models.hub.hub_reachable", reachable)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    corpus._require_hub("FineWeb")  # no error: the datasets library reads its cache
