"""End-to-end test of ``xray3d.pipeline.score_folder`` on real VerSe L4/L5 masks (96x96x47 at 1x1x2 mm)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from xray3d.pipeline.score_folder import case_name, main

from ..conftest import SHARED_DATA

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

MASKS = SHARED_DATA / "xrayto3d-masks"
L4 = "sub-verse004_vert-23-seg-vert_msk.nii.gz"
L5 = "sub-verse004_vert-24-seg-vert_msk.nii.gz"
SHIFT = 1  # voxels along axis 2 (2.0003 mm in the header)

if not (MASKS / L4).is_file() or not (MASKS / L5).is_file():
    pytest.skip(f"real VerSe masks not found in {MASKS}", allow_module_level=True)


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(path))


def _shifted(gt: np.ndarray) -> np.ndarray:
    """The mask moved by SHIFT voxels along axis 2 (np.roll, with the wrapped-around slice cleared)."""
    pred = np.roll(gt, SHIFT, axis=2)
    pred[:, :, :SHIFT] = 0
    return pred


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("score")
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    info: dict = {}
    for name in (L4, L5):
        img = nib.load(str(MASKS / name))
        gt = np.asanyarray(img.dataobj).astype(np.uint8)
        info[name] = (gt, img.affine, img.header.get_zooms())
        _save(gt, img.affine, gt_dir / name)
        _save(_shifted(gt), img.affine, pred_dir / name.replace("_msk", "_pred"))
    gt4, aff4, _ = info[L4]
    gt5, aff5, _ = info[L5]
    _save(gt4, aff4, gt_dir / "eroded_msk.nii.gz")
    _save(ndimage.binary_erosion(gt4), aff4, pred_dir / "eroded_pred.nii.gz")
    _save(gt5, aff5, gt_dir / "empty_gt.nii.gz")
    _save(np.zeros_like(gt5), aff5, pred_dir / "empty_pred.nii.gz")
    _save(gt5, aff5, gt_dir / "badgeom_gt.nii.gz")
    _save(gt5[:, :, :-1], aff5, pred_dir / "badgeom_pred.nii.gz")  # one slice short
    _save(gt4, aff4, pred_dir / "lonely_pred.nii.gz")  # no ground truth
    return pred_dir, gt_dir, info


def test_case_name_rule():
    assert case_name("x_msk_gt.nii.gz") == case_name("x_pred.nii.gz") == case_name("x.nii") == "x"
    assert case_name(L4) == "sub-verse004_vert-23-seg-vert"
    assert case_name("_gt.nii.gz") == "_gt"


@pytest.mark.parametrize("convention", ["mm", "reference"])
def test_score_folder_end_to_end(folders, tmp_path, capsys, convention):
    pred_dir, gt_dir, info = folders
    out = tmp_path / "out"
    args = ["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out), "--n-boot", "200"]
    assert main([*args, "--convention", convention]) == 0
    printed = capsys.readouterr().out
    assert "unmatched prediction: lonely_pred.nii.gz" in printed and "failed: badgeom" in printed

    df = pd.read_csv(out / "per_case.csv").set_index("case")
    hd, asd = ("hd95_mm", "asd_mm") if convention == "mm" else ("hd95_vox", "asd_vox")
    assert {"status", "reason", "dice", hd, asd, "nsd", "empty_pred", "spacing_mm"} <= set(df.columns)
    assert sorted(df.index) == [
        "badgeom",
        "empty",
        "eroded",
        "sub-verse004_vert-23-seg-vert",
        "sub-verse004_vert-24-seg-vert",
    ]
    # Shifted cases: HD95 is the shift, in mm (x header spacing of axis 2) or in voxels.
    for name in (L4, L5):
        row = df.loc[case_name(name)]
        assert row["status"] == "ok" and row["spacing_mm"] == "1 1 2.0003"
        spacing_z = float(info[name][2][2])
        expected = SHIFT * spacing_z if convention == "mm" else float(SHIFT)
        assert row[hd] == pytest.approx(expected, rel=1e-4)
        assert 0.8 < row["dice"] < 1.0
    # Eroded case: Dice = 2|E| / (|E| + |G|); in the reference convention every predicted boundary voxel
    # is exactly 1 voxel from the GT boundary, so ASD (pred -> GT) is 1.
    gt4 = info[L4][0].astype(bool)
    eroded = ndimage.binary_erosion(gt4)
    row = df.loc["eroded"]
    assert row["dice"] == pytest.approx(2 * eroded.sum() / (eroded.sum() + gt4.sum()), rel=1e-6)
    if convention == "reference":
        assert row[asd] == pytest.approx(1.0)
    else:
        assert 0.0 < row[asd] < 2.0003
    # Empty prediction: recorded and counted (inf in mm; HD95 NaN and ASD inf in the reference convention, as
    # MONAI 1.1 gives them), the run goes on.
    row = df.loc["empty"]
    empty_hd = math.isinf(row[hd]) if convention == "mm" else math.isnan(row[hd]) and math.isinf(row[asd])
    assert row["status"] == "ok" and bool(row["empty_pred"]) and empty_hd and row["dice"] == 0.0
    # Geometry mismatch: failed with the reason.
    row = df.loc["badgeom"]
    assert row["status"] == "failed" and "shape mismatch" in row["reason"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["convention"] == convention and summary["n_scored"] == 4 and summary["n_failed"] == 1
    assert summary["unmatched_pred"] == ["lonely_pred.nii.gz"] and summary["unmatched_gt"] == []
    assert summary["n_empty_pred"] == 1 and summary["failed"][0]["case"] == "badgeom"
    m = summary["metrics"][hd]
    assert m["n"] == 4 and m["n_nonfinite"] == 1
    finite = df.loc[df["status"] == "ok", hd].replace(np.inf, np.nan).dropna()
    assert m["mean"] == pytest.approx(finite.mean()) and m["ci_lo"] <= m["mean"] <= m["ci_hi"]
    assert summary["metrics"]["dice"]["n_nonfinite"] == 0
    assert summary["units"][hd] == ("mm" if convention == "mm" else "voxel")
    assert ("metrics_rounded" in summary) == (convention == "reference")

    md, tex = (out / "table.md").read_text(), (out / "table.tex").read_text()
    unit = "HD95 (mm)" if convention == "mm" else "HD95 (vox)"
    assert md.startswith(f"| n | DSC ×100 | {unit} |") and "(1 non-finite)" in md
    assert "\\toprule" in tex and "\\end{tabular}" in tex


def test_spacing_override_and_affine_mismatch(folders, tmp_path):
    pred_dir, gt_dir, _ = folders
    # An affine mismatch (same shape) is also a failed case; --spacing-mm replaces the header spacing.
    img = nib.load(str(gt_dir / L4))
    affine = img.affine.copy()
    affine[:3, 3] += 5.0
    gt2, pred2 = tmp_path / "gt", tmp_path / "pred"
    gt2.mkdir()
    pred2.mkdir()
    _save(np.asanyarray(img.dataobj), img.affine, gt2 / "a_gt.nii.gz")
    _save(_shifted(np.asanyarray(img.dataobj)), img.affine, pred2 / "a_pred.nii.gz")
    _save(np.asanyarray(img.dataobj), affine, pred2 / "b_pred.nii.gz")
    _save(np.asanyarray(img.dataobj), img.affine, gt2 / "b_gt.nii.gz")
    out = tmp_path / "out"
    args = ["--pred", str(pred2), "--gt", str(gt2), "--out", str(out), "--n-boot", "50"]
    assert main([*args, "--spacing-mm", "1.5"]) == 0
    df = pd.read_csv(out / "per_case.csv").set_index("case")
    assert df.loc["a", "hd95_mm"] == pytest.approx(1.5) and df.loc["a", "spacing_mm"] == "1.5 1.5 1.5"
    assert df.loc["b", "status"] == "failed" and "affine mismatch" in df.loc["b", "reason"]


def test_nothing_scored_exits_1(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    rc = main(["--pred", str(tmp_path / "p"), "--gt", str(tmp_path / "g"), "--out", str(tmp_path / "o")])
    assert rc == 1 and "no case was scored" in capsys.readouterr().err
    assert (
        main(["--pred", str(tmp_path / "nope"), "--gt", str(tmp_path / "g"), "--out", str(tmp_path / "o")])
        == 1
    )


def test_binarisation_rule():
    from xray3d.pipeline.score_folder import _binarise

    probs = np.array([0.2, 0.5, 0.7], dtype=np.float32).reshape(1, 1, 3)
    assert _binarise(probs, 0.5).ravel().tolist() == [False, False, True]
    labels = np.array([0, 1, 2], dtype=np.int16).reshape(1, 1, 3)  # label map: any label is foreground
    assert _binarise(labels, 0.5).ravel().tolist() == [False, True, True]
    assert _binarise(labels.astype(np.float32)[..., None], 0.5).shape == (1, 1, 3)  # trailing channel dropped
