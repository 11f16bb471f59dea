"""The external patient of the embedded dataset (vendored TotalSegmentator example CT)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd

from xray3d.data.embedded import EXTERNAL_LEVELS, external_ct, prepare_embedded
from xray3d.data.roi import label_centroid_mm


def test_vendored_files_are_the_real_example_with_licence():
    ct_path, seg_path = external_ct()
    assert (ct_path.parent / "LICENSE").read_text().lstrip().startswith("Apache License")
    ct, seg = nib.load(ct_path), nib.load(seg_path)
    assert ct.shape == seg.shape == (122, 101, 112)
    assert np.allclose(nib.affines.voxel_sizes(ct.affine), 3.0)
    labels = np.unique(np.asarray(seg.dataobj))
    assert set(EXTERNAL_LEVELS.values()) <= set(labels.tolist())


def test_external_vertebra_is_prepared_in_pir_and_centred(tmp_path):
    manifest = prepare_embedded(tmp_path, include_rib=False, levels=["T7", "L3"])
    df = pd.read_csv(manifest)
    ext = df[df.split == "external"]
    assert list(ext["sample_id"]) == ["tsexample_vert-L3"]
    row = ext.iloc[0]
    assert row.patient == "tsexample" and row.cohort == "cross-patient"
    assert df[df.sample_id == "chestct_vert-T7"].iloc[0].cohort == "within-patient"
    msk = nib.load(tmp_path / row.mask_path)
    assert nib.aff2axcodes(msk.affine) == ("P", "I", "R") and msk.shape == (64, 64, 64)
    # the ROI is centred on the vertebra: the mask centroid sits at the grid centre (within 1 voxel)
    m = np.asarray(msk.dataobj) > 0
    centre_vox = np.argwhere(m).mean(axis=0)
    assert np.all(np.abs(centre_vox - 31.5) < 1.5)
    # and the same vertebra in world mm as in the source scan
    _, seg_path = external_ct()
    seg = nib.load(seg_path)
    src_centre = label_centroid_mm(np.asarray(seg.dataobj) == EXTERNAL_LEVELS["L3"], seg.affine)
    roi_centre = label_centroid_mm(m, msk.affine)
    assert np.linalg.norm(np.asarray(src_centre) - np.asarray(roi_centre)) < 2.0
    # a lumbar body is bone: HU of the mask well above soft tissue
    ct = np.asarray(nib.load(tmp_path / row.ct_path).dataobj)
    assert float(np.median(ct[m])) > 150
    meta = json.loads((tmp_path / "manifest.json").read_text())
    assert meta["settings"]["include_external"] is True
