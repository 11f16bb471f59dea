"""Verify a prepared dataset (nnU-Net's verify_dataset_integrity, for xray3d manifests).

``python -m xray3d.data.verify DATA_DIR [--anatomy vertebra]`` (console script ``xray3d-verify``) checks every
sample listed in ``DATA_DIR/manifest.csv``:

* the manifest has the required columns and no sample id twice; required metadata is filled in;
* CT and mask files exist and load (not truncated), share one grid (shape and affine);
* shape and voxel size match the anatomy's training grid (:data:`xray3d.data.roi.PRESETS`) and the
  manifest's ``spacing_mm`` / ``shape`` columns; orientation is PIR;
* the mask holds only {0, 1} and is not empty; the CT is finite and looks like Hounsfield units;
* no subject appears in two splits, and subjects that are the same scan (``manifest.json``
  ``duplicate_scans``) share one split.

Every problem is printed with the file and what to do; the exit code is 1 when any error was found.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from xray3d.data.dataset import REQUIRED_COLUMNS, read_manifest
from xray3d.data.io import DataError, load_nifti
from xray3d.data.roi import PRESETS

__all__ = ["VerifyReport", "verify_dataset", "main"]


@dataclass
class VerifyReport:
    """Result of :func:`verify_dataset`: errors (must fix) and warnings (worth a look)."""

    n_samples: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no error was found."""
        return not self.errors


def _check_sample(root: Path, row: dict, report: VerifyReport) -> None:
    sid = row["sample_id"]
    preset = PRESETS.get(str(row["anatomy"]))
    try:
        ct = load_nifti(root / row["ct_path"], "CT")
        mask = load_nifti(root / row["mask_path"], "mask")
    except DataError as exc:
        report.errors.append(f"{sid}: {exc}")
        return
    ct_data, mask_data = np.asarray(ct.dataobj), np.asarray(mask.dataobj)
    if ct_data.shape != mask_data.shape or not np.allclose(ct.affine, mask.affine, atol=1e-3):
        report.errors.append(
            f"{sid}: CT {row['ct_path']} {ct_data.shape} and mask {row['mask_path']} {mask_data.shape} "
            "do not share one grid; re-prepare the sample"
        )
        return
    axcodes = nib.aff2axcodes(ct.affine)
    if axcodes != ("P", "I", "R"):
        report.errors.append(f"{sid}: orientation {''.join(axcodes)}, expected PIR; re-prepare the sample")
    voxel = nib.affines.voxel_sizes(ct.affine)
    if preset is not None:
        if ct_data.shape != (preset.grid_size,) * 3:
            report.errors.append(
                f"{sid}: shape {ct_data.shape}, the {row['anatomy']} grid is {preset.grid_size}^3"
            )
        if not np.allclose(voxel, preset.spacing_mm, atol=1e-3):
            report.errors.append(
                f"{sid}: voxel size {np.round(voxel, 4).tolist()} mm, the {row['anatomy']} grid is "
                f"{preset.spacing_mm} mm"
            )
    else:
        report.warnings.append(f"{sid}: unknown anatomy {row['anatomy']!r}; grid not checked")
    if (
        "spacing_mm" in row
        and pd.notna(row["spacing_mm"])
        and not np.allclose(voxel, float(row["spacing_mm"]))
    ):
        report.errors.append(
            f"{sid}: manifest spacing_mm {row['spacing_mm']} disagrees with the file ({voxel})"
        )
    values = np.unique(mask_data)
    if not set(values.tolist()) <= {0, 1}:
        report.errors.append(
            f"{sid}: mask {row['mask_path']} holds labels {values[:8].tolist()}, expected 0/1"
        )
    if not mask_data.any():
        report.errors.append(
            f"{sid}: mask {row['mask_path']} is empty; drop the sample or fix the segmentation"
        )
    if not np.isfinite(ct_data).all():
        report.errors.append(
            f"{sid}: CT {row['ct_path']} has NaN/inf voxels; re-prepare it from a valid scan"
        )
    elif ct_data.min() < -1100 or ct_data.max() < 100:
        report.warnings.append(
            f"{sid}: CT range [{ct_data.min():.0f}, {ct_data.max():.0f}] does not look like HU "
            "clipped at -1024"
        )


def _check_duplicate_scans(groups: list[list[str]], df: pd.DataFrame, report: VerifyReport) -> None:
    """A group of subjects with the same CT (``manifest.json`` ``duplicate_scans``) must sit in one split."""
    if "subject" not in df or "split" not in df:
        return
    for group in groups:
        placed = (
            df[df["subject"].isin(group) & (df["split"] != "unlisted")].groupby("subject")["split"].first()
        )
        if placed.nunique() > 1:
            where = ", ".join(f"{s} in {split}" for s, split in placed.items())
            report.errors.append(
                f"leak: {where} are the same scan (manifest.json duplicate_scans); put them in one split"
            )


def verify_dataset(data_dir: str | Path, anatomy: str | None = None) -> VerifyReport:
    """Check a prepared dataset; see the module docstring for the list of checks."""
    root = Path(data_dir)
    report = VerifyReport()
    try:
        df = read_manifest(root / "manifest.csv")
    except DataError as exc:
        report.errors.append(str(exc))
        return report
    if anatomy is not None:
        df = df[df["anatomy"] == anatomy]
        if df.empty:
            report.errors.append(f"no {anatomy!r} samples in {root / 'manifest.csv'}")
            return report
    report.n_samples = len(df)
    if df.empty:
        report.errors.append(
            f"{root / 'manifest.csv'} lists no samples: nothing to train on; re-prepare the dataset"
        )
    meta_path = root / "manifest.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            report.errors.append(f"{meta_path} is not valid JSON ({exc}); re-prepare the dataset")
        else:
            if isinstance(meta, dict):
                _check_duplicate_scans(meta.get("duplicate_scans") or [], df, report)
            if isinstance(meta, dict) and meta.get("complete") is False:
                failed = [s.get("sample_id") for s in meta.get("skipped", []) if s.get("failed")]
                report.errors.append(
                    f"{meta_path} says the preparation is incomplete (failed: {failed[:5]}"
                    f"{'...' if len(failed) > 5 else ''}); re-run the preparation to finish it"
                )
    for sid in df.loc[df["sample_id"].duplicated(), "sample_id"]:
        report.errors.append(f"{sid}: listed twice in the manifest; re-prepare the dataset")
    for col in REQUIRED_COLUMNS:
        missing = df.loc[df[col].isna(), "sample_id"].tolist()
        if missing:
            report.errors.append(
                f"column {col!r} is empty for {missing[:5]}{'...' if len(missing) > 5 else ''}"
            )
    if "subject" in df:
        splits = df.groupby("subject")["split"].nunique()
        for subject in splits[splits > 1].index:
            report.errors.append(f"subject {subject} is in several splits: a leak between train/val/test")
    for row in df.to_dict("records"):
        _check_sample(root, row, report)
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m xray3d.data.verify DATA_DIR [--anatomy NAME]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="prepared dataset directory (holding manifest.csv)")
    parser.add_argument("--anatomy", default=None, help="only check this anatomy")
    args = parser.parse_args(argv)
    report = verify_dataset(args.data_dir, args.anatomy)
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.errors:
        print(f"error: {line}", file=sys.stderr)
    print(f"{report.n_samples} samples checked: {len(report.errors)} errors, {len(report.warnings)} warnings")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
