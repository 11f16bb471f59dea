"""Score a folder of predicted masks against a folder of ground-truth masks (NIfTI), without a model.

Usage::

    python -m xray3d.pipeline.score_folder --pred DIR --gt DIR --out DIR [--convention mm|reference]
        [--spacing-mm S [S S]] [--nsd-tolerance-mm 1.5] [--threshold 0.5] [--pattern '*.nii.gz']
        [--anatomy femur|hip|vertebra|rib] [--metadata cases.csv --group-by COL ...]

Matching rule: a file's *case name* is its name without ``.nii.gz``/``.nii`` and with trailing ``_pred``,
``_gt`` and ``_msk`` suffixes removed (repeatedly, so ``x_msk_gt`` and ``x_pred`` are both ``x``).
Prediction and ground truth with the same case name are a pair; files without a partner are listed as
``unmatched_pred``/``unmatched_gt``; two files of one folder with the same case name are reported as failed.

Per pair: the shapes must be equal and the affines equal (within 1e-3, unless ``--no-affine-check``);
otherwise the case is *failed* with the reason and the others continue. Spacing (mm) is the ground truth's
header voxel size, or ``--spacing-mm`` (for files whose headers are wrong, e.g. the reference's masks).
Binarisation: arrays with integral values (label maps, 0/1 masks) -> ``> 0``; other arrays
(probabilities) -> ``> --threshold``.

Writes atomically into ``--out``: ``per_case.csv`` (one row per pair, ``status`` ok/failed, ``reason``),
``summary.json`` (per metric: mean, std, median, n, n_nonfinite and 95% bootstrap CI over the finite
values; failed cases; unmatched files), ``table.md`` and ``table.tex`` (paper format, Dice ×100).
In the ``reference`` convention the summary also has ``metrics_rounded`` (per-case values rounded to
2 decimals before aggregation, as the reference does) and the tables use those.

``--anatomy`` adds the clinical parameters of both masks and their errors (columns ``gt_*``, ``pred_*``,
``*_err_mm`` / ``*_err_deg``, ``clinical_status``); ``--metadata``/``--group-by`` add subgroup tables. Then
also: ``subgroups.*``, ``clinical.md``, ``dice_vs_clinical.*``, ``boxplot.png`` (as a test run writes).

Exit code 0 when at least one case was scored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xray3d.clinical.cli import load_measure
from xray3d.clinical.evaluate import measure_pair
from xray3d.data.io import DataError, load_nifti, write_csv_atomic, write_json_atomic
from xray3d.metrics.evaluation_report import write_evaluation_report
from xray3d.metrics.image import CONVENTIONS, binary_metrics, metric_keys
from xray3d.metrics.report import describe, summary_table, write_table

__all__ = ["main", "case_name", "match_files", "score_folder"]

log = logging.getLogger(__name__)

_SUFFIXES = ("_pred", "_gt", "_msk")
_EXTENSIONS = (".nii.gz", ".nii")
AFFINE_ATOL = 1e-3


def case_name(filename: str) -> str:
    """The case name of a mask file: extension and trailing ``_pred``/``_gt``/``_msk`` suffixes removed."""
    name = filename
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    stripped = True
    while stripped:
        stripped = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name, stripped = name[: -len(suffix)], True
    return name


def _index(folder: Path, pattern: str) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, pattern))
    by_case: dict[str, list[Path]] = {}
    for p in files:
        by_case.setdefault(case_name(p.name), []).append(p)
    unique = {k: v[0] for k, v in by_case.items() if len(v) == 1}
    dups = {k: v for k, v in by_case.items() if len(v) > 1}
    return unique, dups


def match_files(
    pred_dir: Path, gt_dir: Path, pattern: str = "*.nii.gz"
) -> tuple[list[tuple[str, Path, Path]], list[str], list[str], dict[str, str]]:
    """Pair prediction and ground-truth files by :func:`case_name`.

    Returns:
        ``(pairs, unmatched_pred, unmatched_gt, ambiguous)``: pairs ``(case, pred, gt)`` sorted by case,
        unmatched file names, and ``{case: reason}`` for case names that occur twice in one folder.
    """
    preds, pred_dups = _index(pred_dir, pattern)
    gts, gt_dups = _index(gt_dir, pattern)
    ambiguous = {
        k: f"several files in one folder have case name {k!r}: {[p.name for p in v]}"
        for k, v in {**pred_dups, **gt_dups}.items()
    }
    pairs = [(k, preds[k], gts[k]) for k in sorted(preds.keys() & gts.keys()) if k not in ambiguous]
    unmatched_pred = sorted(p.name for k, p in preds.items() if k not in gts and k not in ambiguous)
    unmatched_gt = sorted(p.name for k, p in gts.items() if k not in preds and k not in ambiguous)
    return pairs, unmatched_pred, unmatched_gt, ambiguous


def _binarise(data: np.ndarray, threshold: float) -> np.ndarray:
    """Label maps / integral arrays -> ``> 0``; probability maps -> ``> threshold``."""
    data = np.asarray(data)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.dtype == bool:
        return data
    if np.issubdtype(data.dtype, np.integer) or np.array_equal(data, np.round(data)):
        return data > 0
    return data > threshold


def _score_pair(
    pred_path: Path,
    gt_path: Path,
    convention: str,
    spacing_mm: Sequence[float] | None,
    nsd_tolerance_mm: float,
    threshold: float,
    check_affine: bool,
    measure=None,
) -> dict:
    pred_img = load_nifti(pred_path, "prediction")
    gt_img = load_nifti(gt_path, "ground-truth mask")
    pred = _binarise(np.asanyarray(pred_img.dataobj), threshold)
    gt = _binarise(np.asanyarray(gt_img.dataobj), threshold)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise DataError(f"shape mismatch: prediction {pred.shape} vs ground truth {gt.shape}")
    if check_affine and not np.allclose(pred_img.affine, gt_img.affine, atol=AFFINE_ATOL):
        raise DataError(
            "affine mismatch: prediction "
            f"{np.round(pred_img.affine, 3).tolist()} vs ground truth {np.round(gt_img.affine, 3).tolist()}"
        )
    spacing = tuple(float(s) for s in (spacing_mm or gt_img.header.get_zooms()[:3]))
    if len(spacing) == 1:
        spacing = spacing * 3
    metrics = binary_metrics(pred, gt, spacing, nsd_tolerance_mm, convention=convention)
    row = {"spacing_mm": " ".join(f"{s:g}" for s in spacing), **metrics}
    if measure is not None:
        affine = np.asarray(gt_img.affine, dtype=float).copy()
        affine[:3, :3] = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(spacing)
        row.update(measure_pair(measure, gt, pred, affine)[0])
    return row


def _read_metadata(path: Path) -> pd.DataFrame:
    """Per-case metadata CSV keyed by ``case`` (the matched case name)."""
    if not path.is_file():
        raise DataError(f"--metadata file {path} does not exist")
    try:
        meta = pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"--metadata file {path} cannot be read as CSV ({exc})") from exc
    if "case" not in meta:
        raise DataError(f"--metadata file {path} has no 'case' column (columns: {list(meta.columns)})")
    meta["case"] = meta["case"].astype(str).map(case_name)
    return meta


def _jsonable(obj):
    """Non-finite floats -> None so that summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj


def score_folder(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    convention: str = "mm",
    spacing_mm: Sequence[float] | None = None,
    nsd_tolerance_mm: float = 1.5,
    threshold: float = 0.5,
    pattern: str = "*.nii.gz",
    check_affine: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    anatomy: str | None = None,
    metadata: str | Path | None = None,
    group_by: Sequence[str] = (),
) -> dict:
    """Score every matched pair and write ``per_case.csv``, ``summary.json``, ``table.md``, ``table.tex``.

    With ``anatomy`` the clinical parameters (``conf/clinical/<anatomy>.yaml``) of both masks and their
    errors are added; ``metadata`` (a CSV with a ``case`` column) is merged into the rows and
    ``group_by`` names its columns to disaggregate by. Subgroup tables, clinical medians,
    Dice-vs-clinical correlation and plots are written as by a test run
    (:func:`~xray3d.metrics.evaluation_report.write_evaluation_report`).

    Returns:
        The summary (as written to ``summary.json``).
    """
    pred_dir, gt_dir, out_dir = Path(pred_dir), Path(gt_dir), Path(out_dir)
    for what, d in (("--pred", pred_dir), ("--gt", gt_dir)):
        if not d.is_dir():
            raise DataError(f"{what} folder {d} does not exist")
    keys = metric_keys(convention)
    measure = load_measure(anatomy) if anatomy else None
    meta = None
    if metadata is not None:
        meta = _read_metadata(Path(metadata))
        missing = [c for c in group_by if c not in meta]
        if missing:
            raise DataError(
                f"--group-by columns {missing} are not in {metadata} (columns: {list(meta.columns)})"
            )
    elif group_by:
        raise DataError("--group-by needs --metadata (a CSV with a 'case' column and the grouping columns)")
    pairs, unmatched_pred, unmatched_gt, ambiguous = match_files(pred_dir, gt_dir, pattern)
    rows: list[dict] = []
    for case, reason in sorted(ambiguous.items()):
        rows.append({"case": case, "pred_file": "", "gt_file": "", "status": "failed", "reason": reason})
    for case, pred_path, gt_path in pairs:
        row = {"case": case, "pred_file": pred_path.name, "gt_file": gt_path.name}
        try:
            row.update(
                _score_pair(
                    pred_path,
                    gt_path,
                    convention,
                    spacing_mm,
                    nsd_tolerance_mm,
                    threshold,
                    check_affine,
                    measure,
                )
            )
            row.update(status="ok", reason="")
        except (DataError, ValueError) as exc:
            log.warning("case %s failed: %s", case, exc)
            row.update(status="failed", reason=str(exc))
        rows.append(row)
    columns = [
        "case",
        "pred_file",
        "gt_file",
        "status",
        "reason",
        "spacing_mm",
        *keys,
        "empty_pred",
        "empty_gt",
    ]
    extra = sorted({k for r in rows for k in r} - set(columns))
    df = pd.DataFrame(rows, columns=columns + extra).sort_values("case", kind="stable").reset_index(drop=True)
    if meta is not None:
        df = df.merge(meta, on="case", how="left")
    ok = df[df["status"] == "ok"].copy()
    for k in keys:
        ok[k] = ok[k].astype(float)
    summary: dict = {
        "convention": convention,
        "units": {
            k: ("voxel" if k.endswith("_vox") else "mm" if k.endswith("_mm") else "ratio") for k in keys
        },
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "threshold": threshold,
        "spacing_mm_override": list(spacing_mm) if spacing_mm else None,
        "n_pairs": len(df),
        "n_scored": len(ok),
        "n_failed": int((df["status"] == "failed").sum()),
        "n_empty_pred": int(ok["empty_pred"].astype(bool).sum()) if len(ok) else 0,
        "n_empty_gt": int(ok["empty_gt"].astype(bool).sum()) if len(ok) else 0,
        "metrics": {k: describe(ok[k], n_boot=n_boot, seed=seed) for k in keys},
        "failed": [{"case": r.case, "reason": r.reason} for r in df[df["status"] == "failed"].itertuples()],
        "unmatched_pred": unmatched_pred,
        "unmatched_gt": unmatched_gt,
    }
    table_df = ok
    if convention == "reference":
        table_df = ok.copy()
        for k in keys:
            table_df[k] = table_df[k].round(2)
        summary["metrics_rounded"] = {k: describe(table_df[k], n_boot=n_boot, seed=seed) for k in keys}
    table = summary_table(table_df, group_cols=(), metrics=keys, n_boot=n_boot, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = write_evaluation_report(
        ok, out_dir, group_by=group_by, metrics=keys, n_boot=n_boot, seed=seed, tables=False
    )
    summary["clinical"] = report["clinical"]
    summary["dice_vs_clinical"] = report["dice_vs_clinical"]
    summary["subgroups_flagged"] = [r for r in report["subgroups"] if r["flag"]]
    summary["files"] = report["paths"]
    write_csv_atomic(df, out_dir / "per_case.csv")
    write_json_atomic(_jsonable(summary), out_dir / "summary.json")
    write_table(table, out_dir / "table")
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xray3d-score",
        description="Score predicted NIfTI masks against ground-truth masks (files matched by case name; "
        "'_pred', '_gt', '_msk' suffixes are ignored).",
    )
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted masks")
    p.add_argument("--gt", required=True, type=Path, help="folder of ground-truth masks")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--convention", choices=CONVENTIONS, default="mm", help="metric convention (default mm)")
    p.add_argument(
        "--spacing-mm",
        nargs="+",
        type=float,
        default=None,
        help="voxel size in mm (1 or 3 values); default: header",
    )
    p.add_argument("--nsd-tolerance-mm", type=float, default=1.5)
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (label maps use > 0)")
    p.add_argument("--pattern", default="*.nii.gz", help="glob of the files to consider")
    p.add_argument("--no-affine-check", action="store_true", help="compare shapes only, not affines")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--anatomy", default=None, help="also measure clinical parameters (femur, hip, vertebra, rib)"
    )
    p.add_argument(
        "--metadata", type=Path, default=None, help="CSV with a 'case' column and per-case metadata"
    )
    p.add_argument("--group-by", nargs="+", default=[], help="metadata columns to disaggregate by")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 when at least one case was scored)."""
    args = _parser().parse_args(argv)
    if args.spacing_mm is not None and len(args.spacing_mm) not in (1, 3):
        print(f"error: --spacing-mm takes 1 or 3 values, got {args.spacing_mm}", file=sys.stderr)
        return 1
    try:
        summary = score_folder(
            args.pred,
            args.gt,
            args.out,
            convention=args.convention,
            spacing_mm=args.spacing_mm,
            nsd_tolerance_mm=args.nsd_tolerance_mm,
            threshold=args.threshold,
            pattern=args.pattern,
            check_affine=not args.no_affine_check,
            n_boot=args.n_boot,
            seed=args.seed,
            anatomy=args.anatomy,
            metadata=args.metadata,
            group_by=args.group_by,
        )
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in summary["unmatched_pred"]:
        print(f"unmatched prediction: {name}")
    for name in summary["unmatched_gt"]:
        print(f"unmatched ground truth: {name}")
    for f in summary["failed"]:
        print(f"failed: {f['case']}: {f['reason']}")
    print(
        f"scored {summary['n_scored']} of {summary['n_pairs']} pairs ({summary['convention']} convention); "
        f"results in {args.out}"
    )
    if summary["n_scored"] == 0:
        print(
            f"error: no case was scored (pairs: {summary['n_pairs']}, failed: {summary['n_failed']}, "
            f"unmatched: {len(summary['unmatched_pred'])} pred / {len(summary['unmatched_gt'])} gt); "
            "check --pred/--gt/--pattern and the matching rule (case names without _pred/_gt/_msk)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
