"""Bad input: every broken sample is skipped with a reason naming the file; nothing crashes."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from xray3d.data.dataset import ManifestDataset, read_manifest
from xray3d.data.io import DataError


@pytest.fixture
def broken_copy(embedded_small, tmp_path):
    """A copy of the small dataset where every non-test sample is damaged in a different way."""
    root = tmp_path / "ds"
    shutil.copytree(embedded_small, root)
    df = pd.read_csv(root / "manifest.csv")
    rows = {r.level: r for r in df.itertuples()}
    # T1: truncated gzip CT
    p = root / rows["T1"].ct_path
    p.write_bytes(p.read_bytes()[:2000])
    # T2: mask on another grid
    p = root / rows["T2"].mask_path
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), p)
    # T5: NaN in the CT
    p = root / rows["T5"].ct_path
    img = nib.load(p)
    data = np.asarray(img.dataobj).copy()
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), p)
    return root, rows


def test_each_bad_sample_is_skipped_with_its_file_named(broken_copy):
    root, rows = broken_copy
    ds = ManifestDataset(root, root / "manifest.csv", ["train", "val", "test"], "vertebra", 1.5, 64)
    assert ds.sample_ids == ["chestct_vert-T7"] == [m["sample_id"] for m in ds.metadata]
    reasons = {s["sample_id"]: s["reason"] for s in ds.skipped}
    assert (
        "corrupt or truncated" in reasons["chestct_vert-T1"]
        and rows["T1"].ct_path in reasons["chestct_vert-T1"]
    )
    assert "share one grid" in reasons["chestct_vert-T2"]
    assert "NaN" in reasons["chestct_vert-T5"]


def test_empty_mask_missing_file_and_wrong_spacing(embedded_small, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(embedded_small, root)
    df = pd.read_csv(root / "manifest.csv")
    t7 = df[df.level == "T7"].iloc[0]
    img = nib.load(root / t7.mask_path)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), root / t7.mask_path)
    (root / df[df.level == "T5"].iloc[0].ct_path).unlink()
    ds = ManifestDataset(root, root / "manifest.csv", ["val", "test"], "vertebra", 1.5, 64)
    reasons = " ".join(s["reason"] for s in ds.skipped)
    assert len(ds) == 0 and "is empty" in reasons and "not found" in reasons
    ds = ManifestDataset(root, root / "manifest.csv", ["train"], "vertebra", 2.0, 64)
    assert len(ds) == 0 and "voxel size" in ds.skipped[0]["reason"]


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="Prepare the dataset"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks columns"):
        read_manifest(tmp_path / "m.csv")


def test_gzip_corruption_message_mentions_fix(embedded_small, tmp_path):
    src = next((embedded_small / "vertebra").glob("*_ct.nii.gz"))
    bad = tmp_path / "bad_ct.nii.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"not a nifti")
    from xray3d.data.io import load_nifti

    with pytest.raises(DataError, match="re-run the preparation step"):
        load_nifti(bad, "CT")
    assert load_nifti(src, "CT").shape == (64, 64, 64)
