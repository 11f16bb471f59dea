"""Ground-truth measurement cache: hits, misses, cached failures, corrupt entries, read-only folders."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest

from xray3d.clinical.base import ClinicalError, validate_mask
from xray3d.clinical.cache import MeasurementCache, measure_key

CALLS: list[int] = []


def size_measure(mask, affine, scale: float = 1.0):
    CALLS.append(1)
    m = validate_mask(mask, affine)
    return {"size_mm3": float(m.sum()) * scale, "n": int(m.sum())}


def _mask(n: int = 4) -> np.ndarray:
    m = np.zeros((10, 10, 10), bool)
    m[:n, :n, :n] = True
    return m


def test_second_measurement_comes_from_disk(tmp_path):
    CALLS.clear()
    cache = MeasurementCache(tmp_path, size_measure)
    first = cache(_mask(), np.eye(4))
    again = MeasurementCache(tmp_path, size_measure)(_mask(), np.eye(4))  # a new process would do this
    assert first == again == {"size_mm3": 64.0, "n": 64} and len(CALLS) == 1
    cache(_mask(5), np.eye(4))  # another mask
    cache(_mask(), np.diag([2.0, 1, 1, 1]))  # another affine
    assert len(CALLS) == 3 and len(list(cache.dir.glob("*.json"))) == 3


def test_failures_are_cached_with_their_reason(tmp_path):
    CALLS.clear()
    cache = MeasurementCache(tmp_path, size_measure)
    for _ in range(2):
        with pytest.raises(ClinicalError, match="0 foreground voxels"):
            cache(np.zeros((5, 5, 5)), np.eye(4))
    assert len(CALLS) == 1 and (cache.hits, cache.misses) == (1, 1)


def test_options_and_code_are_part_of_the_key(tmp_path):
    assert measure_key(size_measure) != measure_key(partial(size_measure, scale=2.0))
    assert measure_key(partial(size_measure, scale=2.0)) == measure_key(partial(size_measure, scale=2.0))


def test_corrupt_entry_is_measured_again(tmp_path):
    CALLS.clear()
    cache = MeasurementCache(tmp_path, size_measure)
    cache(_mask(), np.eye(4))
    next(cache.dir.glob("*.json")).write_text("{not json")
    assert cache(_mask(), np.eye(4))["n"] == 64 and len(CALLS) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_still_measures(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        cache = MeasurementCache(ro, size_measure)
        assert cache(_mask(), np.eye(4))["n"] == 64 and cache(_mask(), np.eye(4))["n"] == 64
        assert not cache._writable
    finally:
        ro.chmod(0o700)


def test_read_only_folder_when_writing_fails(tmp_path, monkeypatch):
    import xray3d.clinical.cache as mod

    def fail(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(mod, "write_text_atomic", fail)
    cache = MeasurementCache(tmp_path, size_measure)
    assert cache(_mask(), np.eye(4))["n"] == 64 and not cache._writable
    assert cache(_mask(), np.eye(4))["n"] == 64


def test_ground_truth_caches_key_on_the_clinical_convention(tmp_path):
    from xray3d.clinical import hip, vertebra

    for module in (hip, vertebra):
        ours = MeasurementCache(tmp_path, partial(module.measure, convention="xray3d"))
        ref = MeasurementCache(tmp_path, partial(module.measure, convention="reference"))
        assert ours.dir != ref.dir
