"""Where the project's data lives, for both an editable checkout and an installed wheel."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def data_root(name: str) -> Path:
    """Folder of the top-level data directory ``name`` ("tasks" or "baselines").

    In a wheel it is packaged as ``clt_bench/_data/<name>``; in a checkout it is ``<repo>/<name>``.
    """
    packaged = PACKAGE_DIR / "_data" / name
    if packaged.is_dir():
        return packaged
    return REPO_DIR / name


def tasks_dir() -> Path:
    return data_root("tasks")


def baselines_dir() -> Path:
    return data_root("baselines")


def package_data(*parts: str) -> Path:
    """A file shipped inside the package (tokenizer, toy weights, presets)."""
    return PACKAGE_DIR.joinpath("data", *parts)


def published_circuit_names(root: Path | None = None) -> list[str]:
    """The circuits shipped as ``baselines/<name>.toml`` (``baseline.circuit`` accepts them)."""
    return sorted(p.stem for p in (root or baselines_dir()).glob("*.toml"))
