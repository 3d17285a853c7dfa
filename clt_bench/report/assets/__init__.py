"""The report pages' stylesheet and script (``report.css``, ``report.js``), inlined into each page
so that it works offline from one file."""

from __future__ import annotations

from importlib.resources import files


def read(name: str) -> str:
    return (files(__package__) / name).read_text(encoding="utf-8")
