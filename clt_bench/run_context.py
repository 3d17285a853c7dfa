"""What every stage gets from the runner: :class:`RunContext`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clt_bench.config import RunConfig
from clt_bench.models import LoadedModel, load_model


class SubrunFn(Protocol):
    """The runner's ``run_subrun`` (its signature, for a stage that starts a sub-run)."""

    def __call__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        stages: Sequence[str],
        *,
        share_from: Path | None = None,
        shared: Sequence[str] = (),
        resume: bool = True,
        model: LoadedModel | None = None,
        progress: Callable[[str], None] | None = None,
        overlap: bool = False,
    ) -> RunContext: ...


@dataclass
class RunContext:
    """What a stage gets: the config, the run directory, the model (loaded once, lazily), the
    summaries of the stages finished so far, and the runner's sub-run entry point."""

    cfg: RunConfig
    run_dir: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _model: LoadedModel | None = None
    run_subrun: SubrunFn | None = None
    progress: Callable[[str], None] = print  # the run's progress lines
    overlap: bool = False  # sub-runs may train a PLT in a second process too
    hashes: dict[str, str] = field(default_factory=dict)  # the runner's stage_hash cache

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            m = self.cfg.model
            self._model = load_model(m.name, m.device, m.dtype, m.seed)
        return self._model

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage
