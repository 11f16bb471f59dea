"""`data=verse2019` trains for real on a prepared VerSe-format fixture, and a VerSe model is evaluated out of
domain on a prepared RSNA-format fixture (`xray3d-domain-shift ... targets=[rsna_cervical]`), CLI only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from xray3d.data.sources.rsna import prepare_rsna
from xray3d.data.sources.verse import prepare_verse
from xray3d.testing import FixtureUnavailable

from ..conftest import run_python

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    from xray3d.testing.rsna import write_rsna_fixture
    from xray3d.testing.verse import write_verse_fixture

    tmp = tmp_path_factory.mktemp("public")
    subjects = [f"sub-verse{n:03d}" for n in range(4, 11)]  # 7 copies of the real sample: every split filled
    try:
        write_verse_fixture(tmp / "verse_raw", subjects=subjects)
        write_rsna_fixture(tmp / "rsna_raw")
    except FixtureUnavailable as exc:
        pytest.skip(str(exc))
    prepare_verse(tmp / "verse_raw", tmp / "verse", progress=False)
    prepare_rsna(tmp / "rsna_raw", tmp / "rsna", progress=False)
    return {"root": tmp, "verse": tmp / "verse", "rsna": tmp / "rsna"}


@pytest.mark.slow  # ~40 s; the domain-shift CLI is covered fast by tests/pipeline/test_domain_shift.py
def test_train_on_verse2019_then_domain_shift_to_rsna(prepared, tmp_path):
    verse = pd.read_csv(prepared["verse"] / "manifest.csv")
    assert set(verse["split"]) == {"train", "val", "test"}
    n_test = int((verse["split"] == "test").sum())
    # ground truths measured once up front: the test report then only measures predictions
    res = run_python(
        ["-m", "xray3d.pipeline.measure_gt", "data=verse2019", f"data.data_dir={prepared['verse']}"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"test: {n_test} ground truths, 0 already cached, " in res.stdout
    res = run_python(
        ["-m", "xray3d.pipeline.measure_gt", "data=verse2019", f"data.data_dir={prepared['verse']}"], tmp_path
    )
    assert f"test: {n_test} ground truths, {n_test} already cached, 0 measured" in res.stdout  # resumable
    res = run_python(
        [
            str(ROOT / "train.py"),
            "data=verse2019",
            f"data.data_dir={prepared['verse']}",
            "data.batch_size=2",
            "debug=limit",
            "trainer.max_steps=2",
            "trainer.limit_test_batches=1.0",  # the whole test split
            "logger=csv",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run = next((tmp_path / "logs").rglob("checkpoints/last.ckpt")).parent.parent
    per_case = pd.read_csv(run / "metrics" / "per_case.csv")
    assert len(per_case) == n_test
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    assert (summary["clinical_gt_cache_hits"], summary["clinical_gt_cache_misses"]) == (n_test, 0)
    assert {"level_group", "fracture_grade", "clinical_status"} <= set(per_case.columns)

    res = run_python(
        [
            "-m",
            "xray3d.pipeline.domain_shift",
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "targets=[rsna_cervical]",
            f"data.data_dir={prepared['rsna']}",
            "data.test_splits=[train,val,test]",  # one fixture study: evaluate all of it
            "debug=limit",
            "trainer.limit_test_batches=1.0",
            "logger=csv",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = next((tmp_path / "logs").rglob("domain_shift/per_case.csv")).parent
    df = pd.read_csv(out / "per_case.csv")
    rsna = pd.read_csv(prepared["rsna"] / "manifest.csv")
    assert (df["domain"] == "out:rsna_cervical").sum() == len(rsna)
    assert (df["domain"] == "in:verse2019").sum() == len(per_case)
    assert "out:rsna_cervical" in (out / "table.md").read_text()
