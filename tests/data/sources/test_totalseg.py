"""TotalSegmentator preparation on a real TotalSegmentator v2 output, in both on-disk layouts.

Fixture: ``shared/data/totalsegmentator-example`` (Apache-2.0, TotalSegmentator's test files): a real
abdomen-pelvis CT at 3 mm and its real v2 multi-label segmentation. ``s0001`` is the v2 layout (copies of
the two files); ``s0002`` is the v1 dataset layout, one binary NIfTI per structure written from the same
multi-label file. On this cut scan the femurs are small (~4,400 native voxels) and the pelvis touches the
border, so the default rules reject everything; relaxed rules produce samples whose content we check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from xray3d.data.roi import PRESETS
from xray3d.data.sources.totalseg import TASK_STRUCTURES, TOTALSEG_V2_IDS, main, prepare_totalseg
from xray3d.testing.totalseg import example_dir, write_totalseg_subject

EXAMPLE = example_dir()
RELAXED = {"min_femur_voxels": 0, "reject_partial": False, "min_ribs": 0, "progress": False}

pytestmark = pytest.mark.skipif(
    not (EXAMPLE / "example_seg.nii.gz").is_file(),
    reason=f"real TotalSegmentator example not found in {EXAMPLE}",
)


def _write_v2(folder: Path) -> None:
    write_totalseg_subject(folder, "v2")


def _write_v1(folder: Path) -> None:
    write_totalseg_subject(folder, "v1")


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("totalseg_raw")
    _write_v2(root / "s0001")
    _write_v1(root / "s0002")
    return root


@pytest.fixture(scope="module")
def native() -> dict[str, int]:
    """Native voxel counts of the merged structure of each sample kind (3 mm grid)."""
    labels = np.asarray(nib.load(EXAMPLE / "example_seg.nii.gz").dataobj)
    count = {n: int((labels == i).sum()) for n, i in TOTALSEG_V2_IDS.items()}
    return {
        "femur_left": count["femur_left"],
        "femur_right": count["femur_right"],
        "hip": count["hip_left"] + count["hip_right"] + count["sacrum"],
        "rib": sum(count[n] for n in TASK_STRUCTURES["rib"]),
    }


@pytest.fixture(scope="module")
def relaxed(raw, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("totalseg_out")
    return {t: prepare_totalseg(raw, out / t, t, **RELAXED) for t in ("femur", "hip", "rib")}


@pytest.mark.parametrize(
    "task, reason",
    [
        ("femur", "30k rule: largest component of femur_left 4488 voxels, femur_right 4396 voxels <= 30000"),
        ("hip", "partial pelvis: touches the scan border"),
        ("rib", "only 12 of 24 ribs present"),
    ],
)
def test_default_rules_skip_the_cut_scan_with_reasons(raw, tmp_path, task, reason):
    path = prepare_totalseg(raw, tmp_path, task, progress=False)
    assert len(pd.read_csv(path)) == 0
    meta = json.loads((tmp_path / "manifest.json").read_text())
    assert meta["complete"]  # rule rejections are final, not failures
    per_subject = 2 if task == "femur" else 1
    assert len(meta["skipped"]) == 2 * per_subject
    assert all(s["reason"].startswith(reason) and not s["failed"] for s in meta["skipped"])
    report = pd.read_csv(tmp_path / "report.csv")
    assert set(report["status"]) == {"skipped"} and set(report["subject"]) == {"s0001", "s0002"}


def test_relaxed_samples_content(relaxed, native):
    for task, path in relaxed.items():
        df = pd.read_csv(path)
        preset = PRESETS[task]
        assert set(df["subject"]) == {"s0001", "s0002"}
        for row in df.itertuples():
            ct = nib.load(path.parent / row.ct_path)
            msk = nib.load(path.parent / row.mask_path)
            assert nib.aff2axcodes(ct.affine) == ("P", "I", "R")
            assert ct.shape == (preset.grid_size,) * 3
            assert np.allclose(nib.affines.voxel_sizes(ct.affine), preset.spacing_mm)
            assert np.allclose(ct.affine, msk.affine)
            m = np.asarray(msk.dataobj)
            assert m.sum() == row.voxels
            com = np.argwhere(m).mean(axis=0)
            assert np.all(np.abs(com - (preset.grid_size - 1) / 2) < 3), (row.sample_id, com)
            key = f"femur_{row.side}" if task == "femur" else task
            expected = native[key] * 3.0**3 / preset.spacing_mm**3
            assert abs(row.voxels / expected - 1) < 0.25, (row.sample_id, row.voxels, expected)
            assert np.asarray(ct.dataobj)[m > 0].mean() > 150  # bone, in HU


def _head_r_offset(mask: np.ndarray) -> float:
    """R-offset (voxels, PIR axis 2) of the most superior 30 % of the bone relative to its centre."""
    idx = np.argwhere(mask)
    top = idx[idx[:, 1] < np.percentile(idx[:, 1], 30)]
    return float(top[:, 2].mean() - idx[:, 2].mean())


def test_right_femur_is_mirrored_and_implant_flagged(relaxed):
    path = relaxed["femur"]
    df = pd.read_csv(path).set_index("sample_id")
    assert list(df.loc[["s0001_femur_left", "s0001_femur_right"], "side"]) == ["left", "right"]
    offsets = {}
    for sid in ("s0001_femur_left", "s0001_femur_right"):
        offsets[sid] = _head_r_offset(np.asarray(nib.load(path.parent / df.loc[sid, "mask_path"]).dataobj))
    # The left femoral head is medial, i.e. toward the patient's right (+R); the mirrored right one too.
    assert offsets["s0001_femur_left"] > 5 and offsets["s0001_femur_right"] > 5
    assert bool(df.loc["s0001_femur_left", "implant"]) and not bool(df.loc["s0001_femur_right", "implant"])
    assert not pd.read_csv(relaxed["hip"])["implant"].any()


def test_both_layouts_give_identical_outputs(relaxed):
    for path in relaxed.values():
        df = pd.read_csv(path)
        a, b = (df[df["subject"] == s].reset_index(drop=True) for s in ("s0001", "s0002"))
        cols = ["anatomy", "side", "spacing_mm", "shape", "voxels", "implant"]
        pd.testing.assert_frame_equal(a[cols], b[cols])
        for ra, rb in zip(a.itertuples(), b.itertuples(), strict=True):
            for col in ("ct_path", "mask_path"):
                ia, ib = nib.load(path.parent / getattr(ra, col)), nib.load(path.parent / getattr(rb, col))
                assert np.array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj))
                assert np.allclose(ia.affine, ib.affine)


def test_rerun_is_a_no_op_and_resumes_after_a_deleted_output(raw, tmp_path):
    prepare_totalseg(raw, tmp_path, "femur", **RELAXED)
    before = _files(tmp_path)
    prepare_totalseg(raw, tmp_path, "femur", **RELAXED)
    assert _files(tmp_path) == before  # nothing rewritten, not even the manifest
    csv = (tmp_path / "manifest.csv").read_text()
    lost = "femur/s0002_femur_right_msk.nii.gz"
    (tmp_path / lost).unlink()
    prepare_totalseg(raw, tmp_path, "femur", **RELAXED)
    after = _files(tmp_path)
    assert lost in after and (tmp_path / "manifest.csv").read_text() == csv
    redone = {f for f in after if f.endswith(".nii.gz") and after[f] != before[f]}
    assert redone == {lost, "femur/s0002_femur_right_ct.nii.gz"}  # only the missing sample


def test_workers_2_equals_workers_1(raw, tmp_path):
    one = prepare_totalseg(raw, tmp_path / "w1", "femur", workers=1, **RELAXED)
    two = prepare_totalseg(raw, tmp_path / "w2", "femur", workers=2, **RELAXED)
    assert one.read_text() == two.read_text()
    assert json.loads((tmp_path / "w2" / "manifest.json").read_text())["timing"]["workers"] == 2


def _good_plus(tmp_path: Path, breaker) -> Path:
    raw = tmp_path / "raw"
    _write_v2(raw / "s0001")
    if breaker is _truncate_v1:
        _write_v1(raw / "s0003")
    else:
        _write_v2(raw / "s0003")
    breaker(raw / "s0003")
    return raw


def _truncate_v1(folder: Path) -> None:
    p = folder / "segmentations" / "hip_left.nii.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _truncate_ct(folder: Path) -> None:
    p = folder / "ct.nii.gz"
    p.write_bytes(p.read_bytes()[:5000])


def _missing_seg(folder: Path) -> None:
    (folder / "seg.nii.gz").unlink()


def _shifted_seg(folder: Path) -> None:
    img = nib.load(folder / "seg.nii.gz")
    aff = img.affine.copy()
    aff[:3, 3] += 6.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), folder / "seg.nii.gz")


def _float_seg(folder: Path) -> None:
    img = nib.load(folder / "seg.nii.gz")
    data = np.asarray(img.dataobj).astype(np.float32)
    data[data > 0] += 0.4
    nib.save(nib.Nifti1Image(data, img.affine), folder / "seg.nii.gz")


def _nan_ct(folder: Path) -> None:
    img = nib.load(folder / "ct.nii.gz")
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), folder / "ct.nii.gz")


@pytest.mark.parametrize(
    "breaker, reason",
    [
        (_truncate_v1, "corrupt or truncated"),
        (_truncate_ct, "corrupt or truncated"),
        (_missing_seg, "missing segmentation"),
        (_shifted_seg, "geometry mismatch"),
        (_float_seg, "not integral"),
        (_nan_ct, "NaN"),
    ],
)
def test_a_bad_subject_is_reported_and_the_other_prepared(tmp_path, breaker, reason):
    raw = _good_plus(tmp_path, breaker)
    out = tmp_path / "out"
    path = prepare_totalseg(raw, out, "hip", **RELAXED)
    assert list(pd.read_csv(path)["sample_id"]) == ["s0001_hip"]
    meta = json.loads((out / "manifest.json").read_text())
    assert not meta["complete"]
    [skip] = meta["skipped"]
    assert skip["subject"] == "s0003" and skip["failed"] and reason in skip["reason"], skip
    report = pd.read_csv(out / "report.csv").set_index("subject")
    assert report.loc["s0003", "status"] == "failed" and reason in report.loc["s0003", "reason"]
    # Once the raw data is fixed, a re-run redoes only the failed subject.
    good = _files(out)
    shutil.rmtree(raw / "s0003")
    _write_v2(raw / "s0003")
    prepare_totalseg(raw, out, "hip", **RELAXED)
    assert list(pd.read_csv(path)["sample_id"]) == ["s0001_hip", "s0003_hip"]
    assert all(_files(out)[f] == t for f, t in good.items() if f.startswith("hip/"))


def test_float_integral_labels_are_accepted(tmp_path):
    raw = tmp_path / "raw"
    _write_v2(raw / "s0001")
    img = nib.load(raw / "s0001" / "seg.nii.gz")
    nib.save(
        nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine), raw / "s0001" / "seg.nii.gz"
    )
    df = pd.read_csv(prepare_totalseg(raw, tmp_path / "out", "hip", **RELAXED))
    assert list(df["sample_id"]) == ["s0001_hip"]


def test_missing_structure_rejects_the_pelvis(tmp_path):
    raw = tmp_path / "raw"
    _write_v1(raw / "s0001")
    p = raw / "s0001" / "segmentations" / "sacrum.nii.gz"
    img = nib.load(p)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), p)
    prepare_totalseg(raw, tmp_path / "out", "hip", **RELAXED)
    [skip] = json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"]
    assert skip["reason"] == "partial pelvis: missing sacrum" and not skip["failed"]


def test_split_lists_and_cli(raw, tmp_path, capsys):
    lists = tmp_path / "splits.json"
    lists.write_text(json.dumps({"s0001": "test", "s0002": "train"}))
    path = prepare_totalseg(raw, tmp_path / "out", "rib", split_lists=lists, **RELAXED)
    assert dict(pd.read_csv(path)[["subject", "split"]].values) == {"s0001": "test", "s0002": "train"}
    assert main(["--task", "hip", "--raw", str(raw), "--out", str(tmp_path / "cli")]) == 1  # all rejected
    assert "samples/min" in capsys.readouterr().out
    assert (tmp_path / "cli" / "report.csv").is_file()


def test_two_candidates_for_one_file_refuse_the_subject(tmp_path):
    """``seg.nii.gz`` beside a v1 ``segmentations/`` folder: which one is meant? Refused, both named."""
    raw = tmp_path / "raw"
    _write_v2(raw / "s0001")
    _write_v1(raw / "s0003")
    shutil.copy(raw / "s0001" / "seg.nii.gz", raw / "s0003" / "seg.nii.gz")
    out = tmp_path / "out"
    path = prepare_totalseg(raw, out, "hip", **RELAXED)
    assert list(pd.read_csv(path)["sample_id"]) == ["s0001_hip"]
    report = pd.read_csv(out / "report.csv").set_index("subject")
    assert report.loc["s0003", "status"] == "failed"
    assert report.loc["s0003", "reason"] == (
        "ambiguous subject: several files of one kind (seg: s0003/seg.nii.gz, s0003/segmentations); "
        "keep one and run again"
    )
