"""CTPelvic1K hip preparation on a fixture in the per-subset naming of Zenodo record 4588403.

Fixture (:mod:`xray3d.testing.ctpelvic1k`): three cases are the real TotalSegmentator example CT with its real
segmentation relabelled to CTPelvic1K's 4 labels (CLINIC, CLINIC-METAL with the unprefixed mask name, KITS19);
its pelvis is cut by the scan. One COLONOG case has the real complete COLONOG-0001 pelvis mask (subsampled,
padded, split into the three labels geometrically) with a synthetic HU volume (bone +700 HU).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from xray3d.data.roi import PRESETS
from xray3d.data.sources.ctpelvic1k import find_cases, main, parse_name, prepare_ctpelvic1k
from xray3d.data.verify import verify_dataset
from xray3d.testing import FixtureUnavailable
from xray3d.testing.ctpelvic1k import COLONOG_CASE, COLONOG_FILES, CUT_CASES, write_ctpelvic1k_fixture

from .helpers import shift_nifti_origin

PRESET = PRESETS["hip"]
COLONOG_ID = f"{COLONOG_CASE}_hip"


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    try:
        return write_ctpelvic1k_fixture(tmp_path_factory.mktemp("ctpelvic1k_raw"))
    except FixtureUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctpelvic1k_out")
    assert main(["--raw", str(raw), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def relaxed(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctpelvic1k_relaxed")
    return prepare_ctpelvic1k(raw, out, reject_partial=False, progress=False).parent


def _native_merged(raw: Path, mask_rel: str) -> tuple[int, float]:
    """Voxel count of labels 1-3 and the voxel volume (mm³) of a raw mask."""
    img = nib.load(raw / mask_rel)
    labels = np.asarray(img.dataobj)
    return int(((labels >= 1) & (labels <= 3)).sum()), float(np.prod(nib.affines.voxel_sizes(img.affine)))


def _check_sample(out: Path, row, raw: Path, mask_rel: str, min_bone_hu: float) -> None:
    ct, msk = nib.load(out / row["ct_path"]), nib.load(out / row["mask_path"])
    assert nib.aff2axcodes(ct.affine) == ("P", "I", "R") == nib.aff2axcodes(msk.affine)
    assert ct.shape == (PRESET.grid_size,) * 3 and np.allclose(ct.affine, msk.affine)
    assert np.allclose(nib.affines.voxel_sizes(ct.affine), PRESET.spacing_mm)
    m = np.asarray(msk.dataobj)
    assert set(np.unique(m).tolist()) == {0, 1} and int(m.sum()) == int(row["voxels"])
    com = np.array(ndimage.center_of_mass(m))
    assert np.all(np.abs(com - (PRESET.grid_size - 1) / 2) < 3), (
        row["sample_id"],
        com,
    )  # pelvis in the middle
    n, vox_mm3 = _native_merged(raw, mask_rel)
    expected = n * vox_mm3 / PRESET.spacing_mm**3
    assert abs(m.sum() / expected - 1) < 0.15, (row["sample_id"], m.sum(), expected)
    assert np.asarray(ct.dataobj)[m > 0].mean() > min_bone_hu  # the bone of the CT lies under the mask


def test_parse_name_matches_the_shipped_names():
    assert parse_name("dataset6_CLINIC_0024") == ("CLINIC_0024", 6)
    assert parse_name("CLINIC_metal_0003") == ("CLINIC_metal_0003", 7)  # dataset7 masks have no prefix
    assert parse_name("dataset7_CLINIC_metal_0003") == ("CLINIC_metal_0003", 7)
    assert parse_name("dataset4_case_00014") == ("case_00014", 4)
    assert parse_name("dataset1_img0073") == ("img0073", 1)
    assert parse_name("dataset2_1.3.6.1.4.1.9328.50.4.0001_3_325") == ("1.3.6.1.4.1.9328.50.4.0001_3_325", 2)
    assert parse_name("dataset5_5502532_Image") == ("5502532_Image", 5)
    assert parse_name("colon_001") == ("colon_001", None)


def test_complete_pelvis_prepared_and_cut_ones_rejected(prepared, raw):
    df = _read(prepared / "manifest.csv")
    assert list(df["sample_id"]) == [COLONOG_ID]
    row = df.iloc[0]
    assert (row["subject"], row["anatomy"], row["subset"], row["dataset"]) == (
        COLONOG_CASE,
        "hip",
        "COLONOG",
        2,
    )
    assert row["split"] == "test" and not row["metal"] and not row["implant"]
    _check_sample(prepared, row, raw, COLONOG_FILES[1], min_bone_hu=500)
    report = _read(prepared / "report.csv").set_index("subject")
    for case in CUT_CASES:
        assert report.loc[case, "status"] == "skipped"
        assert report.loc[case, "reason"] == "partial pelvis: touches the scan border"
    meta = json.loads((prepared / "manifest.json").read_text())
    assert meta["complete"] and meta["orientation"] == "PIR" and meta["labels"]["sacrum"] == 1
    result = verify_dataset(prepared)
    assert result.ok, result.errors


def test_relaxed_rules_keep_cut_pelvises_with_subset_metadata(relaxed, raw):
    df = _read(relaxed / "manifest.csv").set_index("subject")
    assert sorted(df.index) == sorted([COLONOG_CASE, *CUT_CASES])
    subsets = {c: (df.loc[c, "subset"], df.loc[c, "dataset"], bool(df.loc[c, "metal"])) for c in df.index}
    assert subsets["CLINIC_0001"] == ("CLINIC", 6, False)
    assert subsets["CLINIC_metal_0001"] == ("CLINIC-METAL", 7, True)
    assert subsets["case_00001"] == ("KITS19", 4, False)
    assert not df["implant"].astype(bool).any()  # the real femur implant is not within 3 mm of the pelvis
    assert set(df["split"]) == {"test"}
    for case, (_, _, mask_rel) in CUT_CASES.items():
        _check_sample(relaxed, df.loc[case].to_dict() | {"sample_id": f"{case}_hip"}, raw, mask_rel, 150)
    ref = np.asarray(nib.load(relaxed / df.loc["CLINIC_0001", "mask_path"]).dataobj)
    for case in ("CLINIC_metal_0001", "case_00001"):  # the same scan under three subset names
        assert np.array_equal(np.asarray(nib.load(relaxed / df.loc[case, "mask_path"]).dataobj), ref)
    assert verify_dataset(relaxed).ok


def test_rerun_is_a_no_op_and_resumes(raw, prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    before = _files(out)
    prepare_ctpelvic1k(raw, out, progress=False)
    assert _files(out) == before  # nothing rewritten, not even the manifest
    lost = f"hip/{COLONOG_ID}_msk.nii.gz"
    (out / lost).unlink()
    prepare_ctpelvic1k(raw, out, progress=False)
    after = _files(out)
    redone = {f for f in after if after[f] != before.get(f)}
    assert {lost, f"hip/{COLONOG_ID}_ct.nii.gz"} <= redone
    assert not {f for f in redone if f.startswith("hip/")} - {lost, f"hip/{COLONOG_ID}_ct.nii.gz"}


def _truncate_ct(raw: Path) -> None:
    p = raw / CUT_CASES["CLINIC_0001"][1]
    p.write_bytes(p.read_bytes()[:5000])


def _missing_ct(raw: Path) -> None:
    (raw / CUT_CASES["CLINIC_0001"][1]).unlink()


def _missing_mask(raw: Path) -> None:
    (raw / CUT_CASES["CLINIC_metal_0001"][2]).unlink()


def _shifted_mask(raw: Path) -> None:
    shift_nifti_origin(raw / CUT_CASES["case_00001"][2], 6.0)


@pytest.mark.parametrize(
    "breaker, case, reason",
    [
        (_truncate_ct, "CLINIC_0001", "corrupt or truncated"),
        (
            _missing_ct,
            "CLINIC_0001",
            "missing CT dataset6_CLINIC_0001_data.nii.gz: extract CTPelvic1K_dataset6_data",
        ),
        (_missing_mask, "CLINIC_metal_0001", "extract CTPelvic1K_dataset7_mask.tar.gz"),
        (_shifted_mask, "case_00001", "geometry mismatch"),
    ],
)
def test_a_bad_case_fails_with_its_reason_and_the_rest_is_prepared(raw, tmp_path, breaker, case, reason):
    bad = Path(shutil.copytree(raw, tmp_path / "raw"))
    breaker(bad)
    out = tmp_path / "out"
    prepare_ctpelvic1k(bad, out, progress=False)
    assert list(_read(out / "manifest.csv")["sample_id"]) == [COLONOG_ID]
    report = _read(out / "report.csv").set_index("subject")
    assert report.loc[case, "status"] == "failed" and reason in report.loc[case, "reason"], report.loc[case]
    assert not json.loads((out / "manifest.json").read_text())["complete"]


def test_missing_ct_of_a_mask_only_subset_says_where_to_get_it(tmp_path):
    raw = tmp_path / "raw"
    (raw / "masks").mkdir(parents=True)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    nib.save(img, raw / "masks" / "dataset4_case_00014_mask_4label.nii.gz")
    prepare_ctpelvic1k(raw, tmp_path / "out", progress=False)
    [skip] = json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"]
    assert skip["failed"] and "missing CT dataset4_case_00014_data.nii.gz" in skip["reason"]
    assert "KiTS19" in skip["reason"]


def test_missing_structure_rejects_the_pelvis(raw, tmp_path):
    bad = Path(shutil.copytree(raw, tmp_path / "raw"))
    p = bad / COLONOG_FILES[1]
    img = nib.load(p)
    labels = np.asarray(img.dataobj).copy()
    labels[labels == 1] = 0
    nib.save(nib.Nifti1Image(labels, img.affine), p)
    prepare_ctpelvic1k(bad, tmp_path / "out", progress=False)
    report = _read(tmp_path / "out" / "report.csv").set_index("subject")
    assert report.loc[COLONOG_CASE, "status"] == "skipped"
    assert report.loc[COLONOG_CASE, "reason"] == "partial pelvis: missing sacrum (label 1)"


def test_reference_split_and_errors(raw, tmp_path, capsys):
    path = prepare_ctpelvic1k(raw, tmp_path / "out", split="reference", reject_partial=False, progress=False)
    df = _read(path)
    assert len(df) == 4 and set(df["split"]) <= {"train", "val", "test"}
    assert df.groupby("subject")["split"].nunique().max() == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--raw", str(empty), "--out", str(tmp_path / "o2")]) == 1
    assert "Zenodo record 4588403" in capsys.readouterr().err
    with pytest.raises(ValueError, match="split must be"):
        prepare_ctpelvic1k(raw, tmp_path / "o3", split="random")


def test_a_stale_mask_in_a_backup_folder_refuses_the_case_naming_both(raw, tmp_path):
    """Two masks for one case (issue 13): never the first in path order; refused with both paths."""
    bad = Path(shutil.copytree(raw, tmp_path / "raw"))
    _, ct_rel, mask_rel = CUT_CASES["case_00001"]
    stale = bad / "backup_2019" / Path(mask_rel).name
    stale.parent.mkdir()
    shutil.copy(bad / mask_rel, stale)
    assert find_cases(bad)["case_00001"]["mask"] is None
    out = tmp_path / "out"
    prepare_ctpelvic1k(bad, out, reject_partial=False, progress=False)
    report = _read(out / "report.csv").set_index("subject")
    assert report.loc["case_00001", "status"] == "failed"
    assert report.loc["case_00001", "reason"] == (
        f"ambiguous subject: several files of one kind (mask: {mask_rel}, "
        f"backup_2019/{Path(mask_rel).name}); keep one and run again"
    )
    prepared = set(_read(out / "manifest.csv")["subject"])
    assert prepared == {COLONOG_CASE, "CLINIC_0001", "CLINIC_metal_0001"}
    # the three cut cases are one scan under three names (the fixture copies one CT): reported as duplicates
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["duplicate_scans"] == [["CLINIC_0001", "CLINIC_metal_0001"]]
