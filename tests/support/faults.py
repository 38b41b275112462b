"""Faults injected into a running daemon: code that runs at the start of each of its Python
processes (a ``sitecustomize`` module on ``PYTHONPATH``), so real processes fail in ways no
outside action can cause (a bug in the bridge, a refused fork)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def injected(tmp_path: Path, code: str) -> dict[str, str]:
    """The environment for a bridge (``make_bridge(env=...)``) running ``code`` at start."""
    where = tmp_path / "inject"
    where.mkdir(exist_ok=True)
    (where / "sitecustomize.py").write_text(textwrap.dedent(code))
    return {"PYTHONPATH": str(where)}
