"""On-disk cache of ground-truth clinical measurements.

The ground truth of a test case does not change between evaluations (models, checkpoints, robustness or
domain-shift runs), so its measurement is computed once and stored as JSON under
``<data_dir>/.clinical_cache/<key>/``. The key covers the measurement (function and options) and the
source code of :mod:`xray3d.clinical`, so a changed algorithm never reads stale values; the file name
covers the mask's voxels and affine. Entries are written atomically; an unreadable entry is recomputed.
Failures (a ground truth that cannot be measured) are cached with their reason as well.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xray3d.clinical.base import ClinicalError
from xray3d.data.io import write_text_atomic

__all__ = ["MeasurementCache", "dataset_cache_dir", "measure_key"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    h = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:10]


def _describe(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"{_describe(fn.func)}({sorted(fn.keywords.items())!r})"
    if hasattr(fn, "measure"):  # ClinicalMeasure
        return f"{type(fn).__name__}[{_describe(fn.measure)}]"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def dataset_cache_dir(data_dir: str | Path) -> Path:
    """The clinical cache folder of a prepared dataset: ``<data_dir>/.clinical_cache``."""
    return Path(data_dir) / ".clinical_cache"


def measure_key(measure: Callable) -> str:
    """Folder name of a measurement's cache entries: its description and the clinical code, hashed."""
    return hashlib.sha1(f"{_describe(measure)}|{_code_digest()}".encode()).hexdigest()[:16]


def _mask_key(mask: np.ndarray, affine: np.ndarray) -> str:
    m = np.ascontiguousarray(np.asarray(mask) != 0)
    h = hashlib.sha1(str(m.shape).encode())
    h.update(np.packbits(m).tobytes())
    h.update(np.round(np.asarray(affine, dtype=float), 6).tobytes())
    return h.hexdigest()


class MeasurementCache:
    """Cached ``measure(mask, affine)`` for ground-truth masks.

    Args:
        root: cache folder (e.g. ``<data_dir>/.clinical_cache``); created on first write. When it cannot
            be written (read-only dataset) the cache only measures, with one warning.
        measure: the measurement.
    """

    def __init__(self, root: str | Path, measure: Callable[..., dict]) -> None:
        self.dir = Path(root) / measure_key(measure)
        self.measure = measure
        self.hits = 0
        self.misses = 0
        self._writable = True

    def path(self, mask: np.ndarray, affine: np.ndarray) -> Path:
        """The cache file of one mask (it may not exist yet)."""
        return self.dir / f"{_mask_key(mask, affine)}.json"

    def __contains__(self, item: tuple[np.ndarray, np.ndarray]) -> bool:
        """``(mask, affine) in cache``: whether that mask's measurement (or failure) is stored."""
        return self.path(*item).is_file()

    def __call__(self, mask: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
        """The measurement, from the cache when present; raises :class:`ClinicalError` like ``measure``."""
        path = self.path(mask, affine)
        if path.is_file():
            try:
                entry = json.loads(path.read_text())
                if not isinstance(entry, dict) or not ({"error", "result"} & set(entry)):
                    raise ValueError("neither 'result' nor 'error' in the entry")
            except (OSError, ValueError) as exc:
                log.warning("clinical cache entry %s unreadable (%s); measuring again", path, exc)
            else:
                self.hits += 1
                if "error" in entry:
                    raise ClinicalError(entry["error"])
                return entry["result"]
        self.misses += 1
        try:
            result = self.measure(mask, affine)
            entry: dict[str, Any] = {"result": result}
        except ClinicalError as exc:
            entry, result = {"error": str(exc)}, exc
        self._write(path, entry)
        if isinstance(result, ClinicalError):
            raise result
        return result

    def _write(self, path: Path, entry: dict) -> None:
        if not self._writable:
            return
        try:
            write_text_atomic(json.dumps(entry, default=float), path)
        except OSError as exc:
            self._writable = False
            log.warning(
                "clinical cache %s is not writable (%s): ground truths are measured every time", self.dir, exc
            )
