"""The preparer skeleton on a tiny synthetic source: ambiguity rule, duplicate scans, leaks, messages."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from xray3d.data.io import DataError
from xray3d.data.sources import base
from xray3d.data.sources.base import Candidate, FileHit, Preparer, Scan
from xray3d.data.verify import verify_dataset

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


class CubeSource(Preparer):
    """A minimal source: ``<subject>/ct.nii.gz`` + ``<subject>/seg.nii.gz``, one sample per subject."""

    name = "cubes"
    anatomy = "vertebra"
    kinds = ("ct", "seg")
    manifest_columns = base.manifest_columns()
    no_files_hint = "expected <subject>/ct.nii.gz and seg.nii.gz"

    def find_files(self) -> Iterator[FileHit]:
        for path in base.visible_files(self.raw_dir):
            kind = path.name.split(".")[0]
            if kind in self.kinds:
                yield FileHit(path.parent.name, kind, str(path.parent.parent), path)

    def load(self, job: dict[str, Any]) -> Scan:
        ct = base.load_ct(Path(job["files"]["ct"]))
        return Scan(ct, {"labels": base.load_labels(ct, Path(job["files"]["seg"]))[0]})

    def samples(self, job: dict[str, Any], scan: Scan) -> Iterator[Candidate]:
        mask = scan.data["labels"] == 1
        from xray3d.data.roi import label_centroid_mm

        yield Candidate(f"{job['subject']}_cube", mask, label_centroid_mm(mask, scan.ct.affine))


def _write_subject(folder: Path, value: int, affine: np.ndarray = AFFINE) -> None:
    """A 24³ CT (-1000 HU air, a 700 HU cube, one voxel set to ``value``) and the cube's label map."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = np.full((24, 24, 24), -1000, dtype=np.int16)
    ct[8:16, 8:16, 8:16] = 700
    ct[0, 0, 0] = value
    seg = np.zeros((24, 24, 24), dtype=np.uint8)
    seg[8:16, 8:16, 8:16] = 1
    nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(seg, affine), folder / "seg.nii.gz")


def _report(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "report.csv", keep_default_na=False)


def test_duplicate_scans_are_reported_and_kept_in_one_split(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for k, subject in enumerate(["a", "b", "c", "d", "e", "f"]):
        _write_subject(raw / "set" / subject, -1000 - k)
    _write_subject(raw / "set" / "a_copy", -1000)  # the scan of a under another name
    out = tmp_path / "out"
    CubeSource.run(raw, out, progress=True)
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["duplicate_scans"] == [["a", "a_copy"]]
    assert len(set(meta["scans"].values())) == 6 and meta["complete"] and not meta["errors"]
    seen = set()
    for seed in range(8):  # any seed: the copies share a split (the scans come from manifest.json)
        df = pd.read_csv(CubeSource.run(raw, out, split_seed=seed, progress=False))
        split = dict(zip(df["subject"], df["split"], strict=True))
        assert split["a"] == split["a_copy"], seed
        seen.add(split["a"])
    assert len(seen) > 1  # the group is drawn like any subject, not parked in one split
    report = _report(out).set_index("subject")
    assert (
        report.loc["a", "note"] == "duplicate scan: same CT voxels and affine as a_copy (kept in one split)"
    )
    assert report.loc["b", "note"] == ""
    assert verify_dataset(out).ok
    # a resumed run with the same settings does nothing
    CubeSource.run(raw, out, progress=False)
    before = (out / "manifest.json").stat().st_mtime_ns
    CubeSource.run(raw, out, progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns == before


def test_imported_split_lists_that_separate_duplicates_are_a_leak(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    for subject in ("a", "b"):
        _write_subject(raw / "set" / subject, -1000)
    _write_subject(raw / "set" / "c", -1001)
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps({"train": ["a", "c"], "test": ["b"]}))
    out = tmp_path / "out"
    assert CubeSource.main(["--raw", str(raw), "--out", str(out), "--split-lists", str(lists)]) == 1
    assert "leak: the same scan is in two splits (a in train, b in test)" in capsys.readouterr().err
    errors = _report(out).query("status == 'error'")
    assert list(errors["subject"]) == ["a"] and "a in train, b in test" in errors["reason"].iloc[0]
    assert json.loads((out / "manifest.json").read_text())["errors"][0]["subjects"] == ["a", "b"]
    report = verify_dataset(out)
    assert any("same scan" in e and "a" in e and "b" in e for e in report.errors), report.errors


def test_one_complete_copy_is_used_and_the_stale_files_listed(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _write_subject(raw / "set" / "a", -1000)
    _write_subject(raw / "set" / "b", -1001)
    stale = raw / "backup_2019" / "a"
    stale.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24), np.uint8), AFFINE), stale / "seg.nii.gz")
    out = tmp_path / "out"
    CubeSource.run(raw, out, progress=False)
    report = _report(out).set_index("subject")
    assert report.loc["a", "status"] == "prepared"
    assert report.loc["a", "note"] == "ignored other copies: backup_2019/a/seg.nii.gz"
    # a second complete copy makes the subject ambiguous: refused with every path, the others prepared
    _write_subject(stale, -1000)
    CubeSource.run(raw, out, progress=False)
    report = _report(out).set_index("subject")
    assert report.loc["a", "status"] == "failed"
    assert report.loc["a", "reason"] == (
        "ambiguous subject: files found in 2 folders and two complete copies (backup_2019/a/ct.nii.gz, "
        "backup_2019/a/seg.nii.gz, set/a/ct.nii.gz, set/a/seg.nii.gz); keep one copy of the subject and run "
        "again"
    )
    assert report.loc["b", "status"] == "prepared"
    assert list(pd.read_csv(out / "manifest.csv")["subject"]) == ["b"]


def test_resolve_files_rules(tmp_path: Path) -> None:
    p = {n: tmp_path / n for n in ("x/ct", "x/ct2", "x/seg", "y/ct", "z/seg")}
    hits = [FileHit("s", "ct", "x", p["x/ct"]), FileHit("s", "ct", "x", p["x/ct2"])]
    [(subject, found)] = base.resolve_files(hits, ("ct", "seg"), tmp_path).items()
    assert (
        found.refused
        == "ambiguous subject: several files of one kind (ct: x/ct, x/ct2); keep one and run again"
    )
    # two incomplete copies: never mixed
    hits = [FileHit("s", "ct", "y", p["y/ct"]), FileHit("s", "seg", "z", p["z/seg"])]
    found = base.resolve_files(hits, ("ct", "seg"), tmp_path)["s"]
    assert "no folder holds a complete set (y/ct, z/seg)" in found.refused
    assert found.files == {"ct": None, "seg": None}
    # a subject known without any file is kept (its preparation fails with what is missing)
    assert base.resolve_files([], ("ct",), tmp_path, subjects=["empty"])["empty"].files == {"ct": None}


def test_scan_digest_is_content_and_geometry() -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    ref = base.scan_digest(nib.Nifti1Image(data, AFFINE))
    assert base.scan_digest(nib.Nifti1Image(data.copy(order="F"), AFFINE)) == ref
    changed = data.copy()
    changed[1, 2, 3] += 1
    assert base.scan_digest(nib.Nifti1Image(changed, AFFINE)) != ref
    moved = AFFINE.copy()
    moved[0, 3] = 0.5
    assert base.scan_digest(nib.Nifti1Image(data, moved)) != ref
    assert base.scan_digest(nib.Nifti1Image(data.astype(np.float32), AFFINE)) != ref


def test_geometry_mismatch_says_shape_or_affine_and_by_how_much() -> None:
    ct = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), AFFINE)
    with pytest.raises(DataError, match=r"seg.nii.gz has shape \(4, 5, 7\), the CT \(4, 5, 6\)"):
        base.check_geometry(ct, nib.Nifti1Image(np.zeros((4, 5, 7), np.uint8), AFFINE), Path("seg.nii.gz"))
    shifted = AFFINE.copy()
    shifted[1, 3] += 0.5
    shifted[0, 0] += 0.02
    with pytest.raises(DataError) as info:
        base.check_geometry(ct, nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), shifted), Path("seg.nii.gz"))
    assert str(info.value) == (
        "CT/segmentation geometry mismatch: seg.nii.gz has the CT's shape (4, 5, 6) but its affine differs "
        "by up to 0.5 mm (tolerance 0.01 mm): [0,0] by 0.02 mm, origin y by 0.5 mm"
    )


def test_raw_input_problems_say_what_is_wrong_with_the_raw_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for k, subject in enumerate(["a", "b", "c"]):
        _write_subject(raw / "set" / subject, -1000 - k)
    seg = raw / "set" / "a" / "seg.nii.gz"
    seg.write_bytes(gzip.decompress(seg.read_bytes()))  # an uncompressed NIfTI under a .nii.gz name
    (raw / "set" / "b" / "ct.nii.gz").write_bytes(b"")  # a zero-byte download
    out = tmp_path / "out"
    CubeSource.run(raw, out, progress=False)
    reason = _report(out).set_index("subject")["reason"]
    assert reason["a"] == (
        f"segmentation file {seg}: uncompressed NIfTI named .nii.gz; rename it to seg.nii (or gzip it) and "
        "run again"
    )
    assert reason["b"].endswith(
        "the file is empty (0 bytes); the download or extraction stopped early: fetch the file again"
    )
    assert "re-run the preparation" not in " ".join(reason)
