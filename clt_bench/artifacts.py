"""The files one stage writes and another reads, typed, with their load / save beside them.

A stage reads another stage's outputs only through this module (or the typed loaders
``clt.circuit_tracer_io.load_run_clt`` and ``baseline.circuits.load_run_circuit``), so a renamed
field is a type error (mypy checks this module strictly) or a failing test, not a missing number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from clt_bench.errors import UserError
from clt_bench.io import read_json, write_json

STAGE_RECORD = "stage.json"


class StageRecord(TypedDict):
    """``<run>/<stage>/stage.json``: written by the runner when a stage finishes."""

    stage: str
    config_hash: str  # the stage's hash (clt_bench.pipeline.stage_hash) when it ran
    code: str  # clt_bench.pipeline.code_identity()
    seconds: float
    summary: dict[str, Any]  # the stage's headline numbers (what the report reads)


def stage_record_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / stage / STAGE_RECORD


def save_stage_record(run_dir: str | Path, record: StageRecord) -> None:
    write_json(stage_record_path(run_dir, record["stage"]), dict(record))


def load_stage_record(run_dir: str | Path, stage: str) -> StageRecord | None:
    """The finished ``stage``'s record (None when it has none: never run or interrupted)."""
    path = stage_record_path(run_dir, stage)
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a stage record (a JSON object).")
    return cast(StageRecord, data)


def stage_summary(run_dir: str | Path, stage: str) -> dict[str, Any]:
    """A finished stage's headline numbers ({} when it has not finished)."""
    record = load_stage_record(run_dir, stage)
    return record.get("summary", {}) if record is not None else {}


class ActivationsManifest(TypedDict):
    """``<run>/activations/manifest.json`` (plus the provenance block of ``io.run_metadata``)."""

    mode: str  # "cache" (shards on disk) or "stream"
    corpus: str
    n_shards: int
    train_tokens: int
    heldout_tokens: int
    n_layers: int
    d_model: int
    dtype: str
    seconds: float


def manifest_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "activations" / "manifest.json"


def save_manifest(run_dir: str | Path, manifest: ActivationsManifest, **meta: Any) -> None:
    write_json(manifest_path(run_dir), {**manifest, **meta})


def load_manifest(run_dir: str | Path) -> ActivationsManifest:
    path = manifest_path(run_dir)
    if not path.is_file():
        raise UserError(f"no activations in {path.parent}; run the activations stage first.")
    return cast(ActivationsManifest, read_json(path))


class FeatureRanking(TypedDict):
    """``<run>/features/ranking.json``: the selected features, in order of influence."""

    features: list[list[int]]  # (layer, index) per feature
    influence: list[float]
    extended: list[list[int]]  # the next features too (4 x top_k), for the curves
    extended_influence: list[float]
    write_effects: list[list[float]]  # per feature: its effect written into each layer
    # per feature: mean first-order (total) PD contribution on the task prompts, the features
    # table's pd_contribution (absent in runs made before round 11: compare recomputes it)
    pd_contributions: NotRequired[list[float]]
    positions: list[str]  # YY, END or other
    n_prompts: int
    n_active_features: int


def ranking_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "features" / "ranking.json"


def save_ranking(run_dir: str | Path, ranking: FeatureRanking) -> None:
    write_json(ranking_path(run_dir), dict(ranking))


def load_ranking(run_dir: str | Path) -> FeatureRanking:
    """The features stage's ranking.json (selected features, influence, write effects)."""
    path = ranking_path(run_dir)
    if not path.is_file():
        raise UserError(f"no feature ranking in {path.parent}; run the features stage first.")
    return cast(FeatureRanking, read_json(path))
