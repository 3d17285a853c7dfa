"""Sub-runs: a run folder that shares some finished stages with another run by symlink.

Used for CLT seeds (``<run>/seeds/clt-seed<s>/``) and for the per-layer transcoder
(``<run>/plt/``): their seed- or transcoder-independent stages (task, baseline, activations)
are computed once in the parent run and linked, so every transcoder sees the same prompts and
activations and the pipeline's resume logic treats the links as finished stages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def link_shared(run_dir: str | Path, sub_dir: str | Path, stages: Iterable[str]) -> None:
    """Relative symlinks ``sub_dir/<stage>`` -> ``run_dir/<stage>`` (stale links replaced, real
    folders of the sub-run left alone)."""
    sub_dir = Path(sub_dir)
    sub_dir.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        link = sub_dir / stage
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            continue
        link.symlink_to(os.path.relpath(Path(run_dir) / stage, sub_dir), target_is_directory=True)
