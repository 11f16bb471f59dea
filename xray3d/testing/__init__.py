"""Real-format dataset fixtures for tests and benchmarks, built from the project's shared real data.

Each submodule writes a small raw dataset in the exact on-disk layout a public dataset ships, from the real
files in ``shared/data`` (see its README): :mod:`xray3d.testing.totalseg` (TotalSegmentator v1/v2 layouts),
:mod:`xray3d.testing.verse` (VerSe 2019, BIDS and pre-BIDS names). The shared data folder is
``$XRAY3D_SHARED_DATA`` when set, else ``../shared/data`` next to the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FixtureUnavailable", "shared_data_dir", "require_file"]


class FixtureUnavailable(FileNotFoundError):
    """A real file a fixture needs is absent (tests should skip, naming the file)."""


def shared_data_dir() -> Path:
    """The project's shared real-data folder (``$XRAY3D_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    env = os.environ.get("XRAY3D_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def require_file(path: Path) -> Path:
    """Return ``path`` if it is a file, else raise :class:`FixtureUnavailable` naming it."""
    if not path.is_file():
        raise FixtureUnavailable(f"real fixture file not found: {path} (set XRAY3D_SHARED_DATA)")
    return path
