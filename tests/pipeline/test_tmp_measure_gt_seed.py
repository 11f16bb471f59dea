"""xray3d-measure-gt: ground-truth clinical measurements cached once per dataset, resumable, failures kept."""

from __future__ import annotations

import shutil

import hydra
import pytest
from hydra.core.global_hydra import GlobalHydra

from xray3d.clinical.base import ClinicalError
from xray3d.clinical.cache import MeasurementCache
from xray3d.pipeline.measure_gt import measure_ground_truths

from ..conftest import compose_cfg


@pytest.fixture
def datamodule(tmp_path, embedded_small):
    data = tmp_path / "data"
    # a copy without the cache other tests' evaluations wrote into the session dataset
    shutil.copytree(embedded_small, data, ignore=shutil.ignore_patterns(".clinical_cache"))
    cfg = compose_cfg("measure_gt", ["+seed=0"], tmp_path / "run", data)
    yield hydra.utils.instantiate(cfg.data)
    GlobalHydra.instance().clear()


def _entries(dm) -> list:
    return list((dm.data_dir / ".clinical_cache").glob("*/*.json"))


def test_measures_each_test_ground_truth_once_then_resumes(datamodule):
    first = measure_ground_truths(datamodule, ("test",))
    n = len(datamodule.dataset("test"))
    assert first["test"]["n"] == n and first["test"]["cached"] == 0
    assert first["test"]["measured"] + len(first["test"]["failed"]) == n
    assert len(_entries(datamodule)) == n
    cache = MeasurementCache(datamodule.data_dir / ".clinical_cache", datamodule.clinical)
    ds = datamodule.dataset("test")
    for i in range(len(ds)):  # the keys the test-time report will look up: the collated item's mask, affine
        item = ds[i]
        assert (item["mask"][0].numpy() > 0.5, item["affine"].double().numpy()) in cache
    again = measure_ground_truths(datamodule, ("test",))
    assert again["test"]["cached"] == n and again["test"]["measured"] == 0


def test_background_workers_and_several_splits(datamodule):
    result = measure_ground_truths(datamodule, ("train", "test"), workers=1)
    n = len(datamodule.dataset("train")) + len(datamodule.dataset("test"))
    assert sum(r["measured"] + len(r["failed"]) for r in result.values()) == n
    assert len(_entries(datamodule)) == n


def _always_fails(mask, affine):
    raise ClinicalError("no posterior elements (test)")


def test_unmeasurable_ground_truths_are_listed_and_cached_as_failures(datamodule):
    datamodule.clinical = _always_fails
    result = measure_ground_truths(datamodule, ("test",))["test"]
    assert result["measured"] == 0
    assert set(result["failed"]) == set(datamodule.dataset("test").sample_ids)
    assert all("no posterior elements" in r for r in result["failed"].values())
    assert measure_ground_truths(datamodule, ("test",))["test"]["cached"] == result["n"]


def test_clear_errors(datamodule):
    with pytest.raises(ValueError, match="unknown splits"):
        measure_ground_truths(datamodule, ("testing",))
    datamodule.clinical = None
    with pytest.raises(ValueError, match="no clinical measurement"):
        measure_ground_truths(datamodule, ("test",))
