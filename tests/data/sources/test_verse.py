"""VerSe 2019 preparation on the real VerSe sample, in the on-disk formats VerSe ships.

Fixture: ``shared/data/verse-sample`` (CC BY-SA 4.0): the real ``sub-verse004`` vertebra mask (161x338x61 at
1x1x2 mm, oblique PIR, float64 labels 16..24 = T9..L5) and its real centroid json, written in the BIDS,
flat and pre-BIDS layouts by :mod:`xray3d.testing.verse` (with a real CT resampled onto the mask grid).
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

from xray3d.data.io import DataError
from xray3d.data.sources.verse import (
    centroids_world,
    find_subjects,
    level_group,
    level_name,
    load_fracture_table,
    main,
    prepare_verse,
    read_ctd,
    read_ctd_units,
)
from xray3d.testing.verse import ct_on_mask_grid as write_ct_on_mask_grid
from xray3d.testing.verse import legacy_centroids, sample_ctd, sample_dir, sample_mask, write_verse_fixture

SAMPLE = sample_dir()
SUB = "sub-verse004"
MASK = sample_mask()
CTD = sample_ctd()
LEVELS = ["T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]

pytestmark = pytest.mark.skipif(not MASK.is_file(), reason=f"real VerSe sample not found in {SAMPLE}")


@pytest.fixture(scope="module")
def ct_on_mask_grid(tmp_path_factory) -> Path:
    """A real CT on the VerSe mask's grid (see :func:`xray3d.testing.verse.ct_on_mask_grid`)."""
    return write_ct_on_mask_grid(tmp_path_factory.mktemp("verse_ct") / "ct.nii.gz")


def _bids(root: Path, ct: Path, sub: str = SUB, mask: Path = MASK) -> None:
    write_verse_fixture(root, "bids", [sub], ct=ct, mask=mask)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ct_on_mask_grid) -> Path:
    root = tmp_path_factory.mktemp("verse_raw")
    _bids(root, ct_on_mask_grid)
    # second subject: truncated ctd json; third subject: no CT
    bad = "sub-verse410_split-verse227"
    _bids(root, ct_on_mask_grid, sub=bad)
    ctd = root / "derivatives" / bad / f"{bad}_seg-subreg_ctd.json"
    ctd.write_text(ctd.read_text()[:60])
    _bids(root, ct_on_mask_grid, sub="sub-verse005")
    (root / "rawdata" / "sub-verse005" / "sub-verse005_ct.nii.gz").unlink()
    out = tmp_path_factory.mktemp("verse_out")
    assert main(["--raw", str(root), "--out", str(out)]) == 0
    return out


def _samples(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", keep_default_na=False)


def test_levels_and_rois(prepared: Path) -> None:
    df = _samples(prepared)
    assert list(df["sample_id"]) == [f"{SUB}_vert-{n}" for n in range(16, 25)]
    assert list(df["level"]) == LEVELS
    assert list(df["level_group"]) == ["thoracic"] * 4 + ["lumbar"] * 5
    assert set(df["anatomy"]) == {"vertebra"} and set(df["shape"]) == {"64x64x64"}
    assert (df["fracture_grade"] == "").all()
    native = nib.load(MASK)
    labels = np.rint(np.asarray(native.dataobj)).astype(int)
    vox_mm3 = float(np.prod(native.header.get_zooms()[:3]))
    centres = centroids_world(*read_ctd(CTD), native.affine, native.shape)
    for row in df.itertuples():
        img = nib.load(prepared / row.mask_path)
        assert nib.aff2axcodes(img.affine) == ("P", "I", "R")
        assert nib.aff2axcodes(nib.load(prepared / row.ct_path).affine) == ("P", "I", "R")
        msk = np.asarray(img.dataobj)
        assert set(np.unique(msk).tolist()) == {0, 1}  # exactly one label per ROI
        assert ndimage.label(msk, structure=np.ones((3, 3, 3)))[1] == 1
        # the ROI is centred on the ctd centroid (vertebral body); the whole vertebra's centre of mass lies
        # 9-14 mm posterior to it, so compare with the native offset mapped into the ROI frame
        com = np.array(ndimage.center_of_mass(msk))
        centre = centres[row.label]
        np.testing.assert_allclose(
            nib.affines.apply_affine(np.linalg.inv(img.affine), centre), 31.5, atol=1e-3
        )
        native_com = nib.affines.apply_affine(native.affine, ndimage.center_of_mass(labels == row.label))
        expected_com = nib.affines.apply_affine(np.linalg.inv(img.affine), native_com)
        assert np.all(np.abs(com - expected_com) < 1.5), (row.level, com, expected_com)
        assert np.all(np.abs(com[1:] - 31.5) < 4), (row.level, com)  # I and R: centred within a few voxels
        expected = (labels == row.label).sum() * vox_mm3 / 1.5**3
        assert abs(msk.sum() - expected) < 0.25 * expected, (row.level, msk.sum(), expected)
        assert msk.sum() == row.voxels


def test_bad_subjects_reported(prepared: Path) -> None:
    report = pd.read_csv(prepared / "report.csv", keep_default_na=False)
    bad = report[report["status"] == "failed"].set_index("subject")["reason"]
    assert "corrupt" in bad["sub-verse410_split-verse227"]
    assert "missing CT" in bad["sub-verse005"]
    assert (report["status"] == "prepared").sum() == 9
    meta = json.loads((prepared / "manifest.json").read_text())
    assert meta["complete"] is False and meta["timing"]["new_samples"] == 9


def test_rerun_does_nothing(tmp_path: Path, ct_on_mask_grid: Path) -> None:
    root = tmp_path / "raw"
    _bids(root, ct_on_mask_grid)
    ctd = root / "derivatives" / SUB / f"{SUB}_seg-subreg_ctd.json"
    entries = json.loads(ctd.read_text()) + [{"label": 25, "X": 60.0, "Y": 300.0, "Z": 30.0}]
    ctd.write_text(json.dumps(entries))  # a centroid whose label (L6) is not in the mask: skipped for good
    out = tmp_path / "out"
    prepare_verse(root, out, progress=False)
    report = pd.read_csv(out / "report.csv").set_index("sample_id")
    assert report.loc[f"{SUB}_vert-25", "status"] == "skipped"
    assert "absent from the mask" in report.loc[f"{SUB}_vert-25", "reason"]
    assert (report["status"] == "prepared").sum() == 9
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    prepare_verse(root, out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_float_labels_and_flat_layout_and_fractures(
    tmp_path: Path, ct_on_mask_grid: Path, prepared: Path
) -> None:
    """Float (non-rounded) labels in a flat layout, two workers, with a fracture table; same ROIs."""
    native = nib.load(MASK)
    noisy = np.asarray(native.dataobj).astype(np.float32) + np.float32(1e-4)
    float_mask = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(noisy, native.affine), float_mask)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(ct_on_mask_grid, flat / f"{SUB}_ct.nii.gz")
    shutil.copy(float_mask, flat / f"{SUB}_seg-vert_msk.nii.gz")
    shutil.copy(CTD, flat / f"{SUB}_seg-subreg_ctd.json")
    table = tmp_path / "appendix.csv"
    pd.DataFrame(
        {
            "verse_ID": ["verse003", "verse004", "verse227"],
            "T12_fx-g": [1, 2, np.nan],
            "T12_fx-s": [1, 1, np.nan],
            "L1_fx-g": [np.nan, "x", 3],
            "L1_fx-s": [np.nan, "x", 3],
            "L2_fx-g": [np.nan, 3, np.nan],
            "L2_fx-s": [np.nan, 2, np.nan],
        }
    ).to_csv(table, index=False)
    out = tmp_path / "out"
    prepare_verse(flat, out, workers=2, fracture_table=table, progress=False)
    df, ref = _samples(out), _samples(prepared)
    assert list(df["sample_id"]) == list(ref["sample_id"])
    assert list(df["source"]) == [f"{SUB}_ct.nii.gz"] * 9
    for a, b in zip(df["mask_path"], ref["mask_path"], strict=True):
        np.testing.assert_array_equal(nib.load(out / a).dataobj, nib.load(prepared / b).dataobj)
    grades = dict(zip(df["level"], zip(df["fracture_grade"], df["fracture_shape"], strict=True), strict=True))
    assert grades["T12"] == ("moderate", "wedge")
    assert grades["L1"] == ("foreign", "foreign")
    assert grades["L2"] == ("severe", "biconcave")
    assert grades["T9"] == ("none", "none") and grades["L5"] == ("none", "none")
    # non-integral float labels are refused with a reason
    nib.save(nib.Nifti1Image(noisy + np.float32(0.3), native.affine), flat / f"{SUB}_seg-vert_msk.nii.gz")
    out2 = tmp_path / "out2"
    prepare_verse(flat, out2, progress=False)
    report = pd.read_csv(out2 / "report.csv")
    assert list(report["status"]) == ["failed"] and "not integral" in report["reason"][0]


def test_split_by_subject(tmp_path: Path, ct_on_mask_grid: Path) -> None:
    """Four subjects (copies of the sample): every subject's vertebrae share one split."""
    root = tmp_path / "raw"
    subs = [f"sub-verse00{i}" for i in range(4, 8)]
    for sub in subs:
        _bids(root, ct_on_mask_grid, sub=sub)
    table = tmp_path / "t.csv"
    pd.DataFrame({"verse_ID": ["verse006"], "L5_fx-g": [1], "L5_fx-s": [3]}).to_csv(table, index=False)
    df = _samples(
        prepare_verse(root, tmp_path / "out", workers=2, fracture_table=table, progress=False).parent
    )
    assert len(df) == 36
    per_subject = df.groupby("subject")["split"].nunique()
    assert (per_subject == 1).all() and set(df["split"]) == {"train", "val", "test"}
    row = df[df["sample_id"] == "sub-verse006_vert-24"].iloc[0]
    assert (row["fracture_grade"], row["fracture_shape"]) == ("mild", "crush")


def test_centroids_any_orientation() -> None:
    """The same centroids give the same world positions whatever the stored orientation of the mask."""
    img = nib.load(MASK)
    direction, cents = read_ctd(CTD)
    ref = centroids_world(direction, cents, img.affine, img.shape)
    for codes in (("R", "A", "S"), ("L", "P", "S"), ("S", "R", "P")):
        trans = nib.orientations.ornt_transform(
            nib.io_orientation(img.affine), nib.orientations.axcodes2ornt(codes)
        )
        re = img.as_reoriented(trans)
        got = centroids_world(direction, cents, re.affine, re.shape)
        for lab in ref:
            np.testing.assert_allclose(got[lab], ref[lab], atol=1e-6)
    # the centroid voxel of the PIR sample falls inside its own vertebra
    labels = np.rint(np.asarray(img.dataobj)).astype(int)
    for lab, xyz in cents:
        assert labels[tuple(np.rint(xyz).astype(int))] == lab


def test_names_and_table_errors(tmp_path: Path) -> None:
    assert [level_name(n) for n in (1, 7, 8, 19, 20, 25, 28)] == ["C1", "C7", "T1", "T12", "L1", "L6", "T13"]
    assert [level_group(n) for n in (3, 12, 24, 25, 28)] == [
        "cervical",
        "thoracic",
        "lumbar",
        "other",
        "other",
    ]
    xlsx = tmp_path / "appendix.xlsx"
    xlsx.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(DataError, match="appendix.xlsx cannot be read"):
        load_fracture_table(xlsx)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"verse_ID": ["verse004"], "L1_fx-g": [7]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="unexpected code"):
        load_fracture_table(bad)


# ----------------------------------------------------------------------------------------------------------
# pre-BIDS names (original MICCAI 2019 release), mixed layouts, the appendix workbook


def _write_appendix_xlsx(path: Path, sheet: str = "VerSe_dataset") -> Path:
    """A small VerSe appendix workbook: an unrelated first sheet, then ``sheet`` with grades/shapes."""
    import openpyxl

    book = openpyxl.Workbook()
    book.active.title = "readme"
    book.active.append(["VerSe fracture grading appendix (test copy)"])
    ws = book.create_sheet(sheet)
    ws.append(["verse_ID", "T12_fx-g", "T12_fx-s", "L1_fx-g", "L1_fx-s", "L2_fx-g", "L2_fx-s"])
    ws.append(["verse004", 2, 1, "x", "x", None, None])
    ws.append(["verse227", None, None, 3, 3, 1, 2])
    book.save(path)
    return path


def test_fracture_table_xlsx(tmp_path: Path) -> None:
    table = load_fracture_table(_write_appendix_xlsx(tmp_path / "appendix.xlsx"))
    assert set(table) == {4, 227}
    assert table[4]["T12"] == ("moderate", "wedge")
    assert table[4]["L1"] == ("foreign", "foreign")
    assert table[4]["L2"] == ("none", "none")  # empty cell = 0
    assert table[227]["T12"] == ("none", "none")
    assert table[227]["L1"] == ("severe", "crush")
    assert table[227]["L2"] == ("mild", "biconcave")
    # the same sheet written by pandas reads the same
    frame = pd.DataFrame({"verse_ID": ["verse004"], "T12_fx-g": [2], "T12_fx-s": [1]})
    with pd.ExcelWriter(tmp_path / "pandas.xlsx", engine="openpyxl") as writer:
        frame.to_excel(writer, sheet_name="VerSe_dataset", index=False)
    assert load_fracture_table(tmp_path / "pandas.xlsx")[4]["T12"] == ("moderate", "wedge")
    # a workbook without the sheet names it (and the sheets it has)
    wrong = _write_appendix_xlsx(tmp_path / "wrong.xlsx", sheet="Sheet2")
    with pytest.raises(DataError, match=r"no sheet 'VerSe_dataset' \(sheets: \['readme', 'Sheet2'\]\)"):
        load_fracture_table(wrong)


def test_prebids_centroid_convention() -> None:
    """Pre-BIDS ctd: mm on X: S->I, Y: A->P, Z: R->L (challenge page); same world points as the BIDS file."""
    legacy = legacy_centroids(CTD, MASK)
    img = nib.load(MASK)
    assert nib.aff2axcodes(img.affine) == ("P", "I", "R")
    zooms = nib.affines.voxel_sizes(img.affine)  # (P, I, R) voxel sizes, about (1, 1, 2)
    _, bids = read_ctd(CTD)
    for entry, (label, (p, i, r)) in zip(legacy, bids, strict=True):
        assert entry["label"] == label
        # X = index toward I times its spacing; Y = index toward P; Z = index toward L (R axis flipped)
        np.testing.assert_allclose(
            [entry["X"], entry["Y"], entry["Z"]],
            [i * zooms[1], p * zooms[0], (img.shape[2] - 1 - r) * zooms[2]],
            atol=1e-9,
        )


def test_prebids_layout_gives_the_bids_samples(tmp_path: Path, ct_on_mask_grid: Path, prepared: Path) -> None:
    """The original challenge names (verse004.nii.gz, _seg, _ctd with mm centroids) give identical ROIs."""
    raw = tmp_path / "raw"
    written = write_verse_fixture(raw, "prebids", [SUB], ct=ct_on_mask_grid)
    assert sorted(p.name for p in written[SUB].values()) == [
        "verse004.nii.gz",
        "verse004_ctd.json",
        "verse004_seg.nii.gz",
    ]
    direction, cents, units = read_ctd_units(written[SUB]["ctd"])
    assert (direction, units) == (("I", "P", "L"), "mm")
    img = nib.load(MASK)
    ref = centroids_world(*read_ctd(CTD), img.affine, img.shape)
    got = centroids_world(direction, cents, img.affine, img.shape, "mm")
    for lab in ref:
        np.testing.assert_allclose(got[lab], ref[lab], atol=1e-6)
    table = _write_appendix_xlsx(tmp_path / "appendix.xlsx")
    out = tmp_path / "out"
    prepare_verse(raw, out, fracture_table=table, progress=False)
    df, bids = _samples(out), _samples(prepared)
    assert list(df["sample_id"]) == list(bids["sample_id"])  # subject id normalised to sub-verse004
    assert set(df["source"]) == {"verse004.nii.gz"}
    for a, b in zip(df.itertuples(), bids.itertuples(), strict=True):
        for col in ("ct_path", "mask_path"):
            ia, ib = nib.load(out / getattr(a, col)), nib.load(prepared / getattr(b, col))
            np.testing.assert_array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj))
            np.testing.assert_allclose(ia.affine, ib.affine, atol=1e-6)
    grades = dict(zip(df["level"], zip(df["fracture_grade"], df["fracture_shape"], strict=True), strict=True))
    assert grades["T12"] == ("moderate", "wedge") and grades["L1"] == ("foreign", "foreign")
    assert grades["L2"] == ("none", "none")


def test_mixed_layouts_and_missing_files(tmp_path: Path, ct_on_mask_grid: Path) -> None:
    """BIDS and pre-BIDS subjects in one tree; no subject mixes layouts; a CT alone fails with a reason."""
    raw = tmp_path / "raw"
    write_verse_fixture(raw, "bids", ["sub-verse004", "sub-verse007"], ct=ct_on_mask_grid)
    write_verse_fixture(raw / "challenge", "prebids", ["sub-verse005", "sub-verse006"], ct=ct_on_mask_grid)
    (raw / "challenge" / "verse006_seg.nii.gz").unlink()  # CT only
    (raw / "challenge" / "verse006_ctd.json").unlink()
    shutil.copy(ct_on_mask_grid, raw / "challenge" / "verse007.nii.gz")  # a stray pre-BIDS copy of 007's CT
    subjects = find_subjects(raw)
    assert list(subjects) == ["sub-verse004", "sub-verse005", "sub-verse006", "sub-verse007"]
    assert all("rawdata" in str(p) or "derivatives" in str(p) for p in subjects["sub-verse007"].values())
    assert subjects["sub-verse005"]["ctd"].name == "verse005_ctd.json"
    assert subjects["sub-verse006"]["mask"] is None and subjects["sub-verse006"]["ctd"] is None
    # prepare only the pre-BIDS folder (the BIDS path is covered above): there the stray CT of 007 is alone
    out = tmp_path / "out"
    prepare_verse(raw / "challenge", out, progress=False)
    report = pd.read_csv(out / "report.csv", keep_default_na=False)
    failed = report[report["status"] == "failed"].set_index("subject")["reason"]
    assert list(failed.index) == ["sub-verse006", "sub-verse007"]
    assert failed["sub-verse006"] == (
        "missing vertebra mask (verse006_seg.nii.gz), centroid file (verse006_ctd.json) "
        "(found only verse006.nii.gz for sub-verse006)"
    )
    assert failed["sub-verse007"].startswith("missing vertebra mask (verse007_seg.nii.gz)")
    prepared_ids = report[report["status"] == "prepared"]["sample_id"]
    assert list(prepared_ids) == [f"sub-verse005_vert-{n}" for n in range(16, 25)]
    empty = tmp_path / "empty"
    (empty / "other").mkdir(parents=True)
    (empty / "other" / "notes_ct.txt").write_text("not VerSe")
    with pytest.raises(DataError, match="pre-BIDS verseNNN.nii.gz"):
        prepare_verse(empty, tmp_path / "out_empty", progress=False)


# ----------------------------------------------------------------------------------------------------------
# issue 13: a mask label without a centroid, a stale file in another folder, one scan under two names


def test_mask_label_without_centroid_is_prepared_from_the_mask_and_said(
    tmp_path: Path, ct_on_mask_grid: Path, prepared: Path
) -> None:
    root = tmp_path / "raw"
    _bids(root, ct_on_mask_grid)
    ctd = root / "derivatives" / SUB / f"{SUB}_seg-subreg_ctd.json"
    ctd.write_text(json.dumps([e for e in json.loads(ctd.read_text()) if e.get("label") != 20]))  # no L1
    out = tmp_path / "out"
    prepare_verse(root, out, progress=False)
    df = _samples(out).set_index("sample_id")
    assert list(df.index) == [f"{SUB}_vert-{n}" for n in range(16, 25)]  # L1 is not dropped
    assert df.loc[f"{SUB}_vert-20", "centroid_source"] == "mask"
    assert set(df.drop(f"{SUB}_vert-20")["centroid_source"]) == {"ctd"}
    note = pd.read_csv(out / "report.csv", keep_default_na=False).set_index("sample_id")["note"]
    assert note[f"{SUB}_vert-20"] == (
        f"L1 (label 20) is in the mask but not in {SUB}_seg-subreg_ctd.json: ROI centred on the centroid of "
        "its largest connected component (centroid_source=mask)"
    )
    assert note.drop(f"{SUB}_vert-20").eq("").all()
    meta = json.loads((out / "manifest.json").read_text())
    row = next(r for r in meta["samples"] if r["label"] == 20)
    assert row["centroid_source"] == "mask" and "not in" in row["note"]
    # the mask-centred ROI holds at least as much of L1 as the ctd-centred one, centred on the vertebra
    ours = np.asarray(nib.load(out / df.loc[f"{SUB}_vert-20", "mask_path"]).dataobj)
    ref = _samples(prepared).set_index("sample_id").loc[f"{SUB}_vert-20", "mask_path"]
    assert ours.sum() >= 0.98 * np.asarray(nib.load(prepared / ref).dataobj).sum()
    com = np.array(ndimage.center_of_mass(ours))
    assert np.all(np.abs(com - 31.5) < 1.0), com  # centred on the vertebra itself


def test_stale_centroid_file_in_a_backup_folder_is_ignored_and_listed(
    tmp_path: Path, ct_on_mask_grid: Path, prepared: Path
) -> None:
    """The issue's case: ``backup_2019/<sub>_seg-subreg_ctd.json``, 15 mm off, must not win over the
    subject's own centroid file."""
    root = tmp_path / "raw"
    _bids(root, ct_on_mask_grid)
    stale = [
        {**e, "X": e["X"] + 15.0} if "label" in e else e
        for e in json.loads((root / "derivatives" / SUB / f"{SUB}_seg-subreg_ctd.json").read_text())
    ]
    (root / "backup_2019").mkdir()
    (root / "backup_2019" / f"{SUB}_seg-subreg_ctd.json").write_text(json.dumps(stale))
    assert find_subjects(root)[SUB]["ctd"] == root / "derivatives" / SUB / f"{SUB}_seg-subreg_ctd.json"
    out = tmp_path / "out"
    prepare_verse(root, out, progress=False)
    df, ref = _samples(out), _samples(prepared)
    for a, b in zip(df["mask_path"], ref["mask_path"], strict=True):  # the same ROIs as without the backup
        np.testing.assert_array_equal(nib.load(out / a).dataobj, nib.load(prepared / b).dataobj)
    report = pd.read_csv(out / "report.csv", keep_default_na=False)
    assert set(report["note"]) == {f"ignored other copies: backup_2019/{SUB}_seg-subreg_ctd.json"}
    # a second complete copy elsewhere: the subject is refused, every path named
    _bids(root / "copy2", ct_on_mask_grid)
    prepare_verse(root, out, progress=False)
    report = pd.read_csv(out / "report.csv", keep_default_na=False)
    [reason] = report.loc[report["status"] == "failed", "reason"]
    assert reason.startswith("ambiguous subject: files found in 3 folders and two complete copies")
    assert f"backup_2019/{SUB}_seg-subreg_ctd.json" in reason and f"rawdata/{SUB}/{SUB}_ct.nii.gz" in reason
    assert f"copy2/derivatives/{SUB}/{SUB}_seg-vert_msk.nii.gz" in reason
    assert len(_samples(out)) == 0 and not json.loads((out / "manifest.json").read_text())["complete"]


def test_one_scan_under_two_names_is_a_duplicate_kept_in_one_split(
    tmp_path: Path, ct_on_mask_grid: Path
) -> None:
    root = tmp_path / "raw"
    write_verse_fixture(root, "bids", ["sub-verse004", "sub-verse005", "sub-verse006"], ct=ct_on_mask_grid)
    write_verse_fixture(root, "bids", ["sub-verse104"], ct=ct_on_mask_grid, distinct=False)
    write_verse_fixture(root, "bids", ["sub-verse204"], ct=ct_on_mask_grid, distinct=False)
    out = tmp_path / "out"
    assert main(["--raw", str(root), "--out", str(out)]) == 0
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["duplicate_scans"] == [["sub-verse104", "sub-verse204"]]
    df = _samples(out)
    assert df.loc[df["subject"].isin(["sub-verse104", "sub-verse204"]), "split"].nunique() == 1
    note = pd.read_csv(out / "report.csv", keep_default_na=False).set_index("sample_id")["note"]
    assert note["sub-verse104_vert-16"] == (
        "duplicate scan: same CT voxels and affine as sub-verse204 (kept in one split)"
    )
    # imported lists that separate them: a leak, reported as an error (and the command fails)
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps({"sub-verse104": "train", "sub-verse204": "test"}))
    assert main(["--raw", str(root), "--out", str(out), "--split-lists", str(lists)]) == 1
    report = pd.read_csv(out / "report.csv", keep_default_na=False)
    [reason] = report.loc[report["status"] == "error", "reason"]
    assert "sub-verse104 in train, sub-verse204 in test" in reason
