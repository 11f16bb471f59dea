"""xray3d's DRRs agree with ITK's compiled ray caster on real CT ROIs (experiments/benchmarks/drr_vs_itk.py).

No timing assertions here: timing is the benchmark script's job.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("itk", reason="itk is not installed (optional: pip install 'xray3d[bench]')")

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks" / "drr_vs_itk.py"


@pytest.fixture(scope="module")
def bench():
    """The benchmark script imported as a module."""
    if not SCRIPT.is_file():
        pytest.skip(f"{SCRIPT} is missing")
    spec = importlib.util.spec_from_file_location("drr_vs_itk", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def rois(bench, embedded_small):
    """Two real vertebra ROIs (64³ @ 1.5 mm, PIR, HU) of the session's embedded dataset."""
    return bench.load_rois(embedded_small / "manifest.csv", anatomy="vertebra", limit=2)


def test_itk_image_matches_nifti(bench, rois):
    """The LPS ITK image holds the NIfTI voxel values at the same physical points."""
    roi = rois[0]
    assert bench.check_itk_image(roi, bench.itk_image(roi)) == 0.0


def test_drr_matches_itk(bench, rois):
    """Raw AP and LAT detector images: NCC >= 0.99 vs ITK and the same intensity scale (whole ray)."""
    for roi in rois:
        stats = bench.compare_roi(roi)["xray3d"]
        for view in bench.VIEWS:
            assert stats[f"ncc_{view}"] >= bench.NCC_TARGET, (roi.sample_id, view, stats)
            # Integrating only half of each ray (diffdrr's default trilinear bounds) halves the intensity.
            assert 0.9 < stats[f"scale_{view}"] < 1.15, (roi.sample_id, view, stats)


def test_ncc(bench):
    """The NCC helper is Pearson's r: 1 for affine copies, -1 for negated images."""
    a = np.random.default_rng(0).random((8, 8))
    assert bench.ncc(a, 3 * a + 1) == pytest.approx(1.0)
    assert bench.ncc(a, -a) == pytest.approx(-1.0)
