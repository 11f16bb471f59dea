"""Shared machinery of the per-subject dataset preparations (TotalSegmentator, VerSe, ...).

A preparation turns each raw subject into samples with a ``process(job) -> {"subject", "rows", "skipped"}``
function that never raises. This module resumes from the previous run's ``manifest.json`` (same settings
digest: subjects whose samples are all on disk and that did not fail are not redone), runs the remaining
subjects in worker processes with a progress bar, assigns the subject-level split, and writes
``report.csv``, ``manifest.csv`` and ``manifest.json`` atomically (the JSON last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from xray3d.data.io import DataError, write_csv_atomic, write_json_atomic
from xray3d.data.splits import reference_split

__all__ = [
    "GEOMETRY_ATOL_MM",
    "REPORT_COLUMNS",
    "PreviousRun",
    "check_geometry",
    "digest",
    "integral_labels",
    "load_previous",
    "run_subjects",
    "sample_ok",
    "skip_entry",
    "write_prepared",
]

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["subject", "sample_id", "status", "reason"]
GEOMETRY_ATOL_MM = 1e-2  # the reference relaxes SimpleITK's tolerance to 0.01 as well


def digest(settings: dict) -> str:
    """Short SHA-1 of a JSON-serialisable settings dict."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def sample_ok(row: dict, out_dir: Path) -> bool:
    """Both files of a manifest row exist under ``out_dir``."""
    return (out_dir / row["ct_path"]).is_file() and (out_dir / row["mask_path"]).is_file()


def skip_entry(subject: str, sample_id: str, reason: str, failed: bool = False) -> dict[str, Any]:
    """A skipped sample; ``failed`` ones (data errors) are retried by the next run, rule rejections not."""
    return {"subject": subject, "sample_id": sample_id, "reason": reason, "failed": failed}


def check_geometry(ct: nib.Nifti1Image, seg: nib.Nifti1Image, path: Path) -> None:
    """Raise :class:`DataError` unless the segmentation shares the CT's grid."""
    if seg.shape != ct.shape or not np.allclose(seg.affine, ct.affine, atol=GEOMETRY_ATOL_MM):
        raise DataError(
            f"CT/segmentation geometry mismatch: {path.name} has shape {seg.shape}, the CT {ct.shape} "
            "(or their affines differ by more than 0.01 mm)"
        )


def integral_labels(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Label array as int32; float labels are rounded after checking they are integral."""
    data = np.asanyarray(img.dataobj)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise DataError(f"unexpected label values in {path.name}: NaN/inf in a float label map")
        rounded = np.rint(data)
        if np.abs(data - rounded).max(initial=0.0) > 1e-3:
            raise DataError(f"unexpected label dtype in {path.name}: float labels that are not integral")
        return rounded.astype(np.int32)
    if data.dtype.kind not in "iub":
        raise DataError(f"unexpected label dtype {data.dtype} in {path.name}")
    return data.astype(np.int32, copy=False)


@dataclass
class PreviousRun:
    """What a previous run with the same settings left behind.

    Attributes:
        rows: per subject, its manifest rows whose files still exist.
        skipped: per subject, its skipped entries.
        settled: subjects that need no work.
        up_to_date: every subject settled and the split settings unchanged: nothing to do.
    """

    rows: dict[str, list[dict]] = field(default_factory=dict)
    skipped: dict[str, list[dict]] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)
    up_to_date: bool = False


def load_previous(
    out_dir: Path, settings_digest: str, subjects: Iterable[str], split_settings: dict, force: bool
) -> PreviousRun:
    """Read ``out_dir/manifest.json`` if it was written with the same settings (else start afresh)."""
    manifest_json = out_dir / "manifest.json"
    if force or not manifest_json.is_file():
        return PreviousRun()
    prev = PreviousRun()
    try:
        meta = json.loads(manifest_json.read_text())
        if meta.get("digest") != settings_digest:
            return PreviousRun()
        for r in meta["samples"]:
            if sample_ok(r, out_dir):
                prev.rows.setdefault(r["subject"], []).append(r)
        for s in meta["skipped"]:
            prev.skipped.setdefault(s["subject"], []).append(s)
        for subj in meta["subjects"]:
            n_rows = sum(1 for r in meta["samples"] if r["subject"] == subj)
            ok = len(prev.rows.get(subj, [])) == n_rows
            if ok and not any(s.get("failed") for s in prev.skipped.get(subj, [])):
                prev.settled.add(subj)
        prev.up_to_date = (
            prev.settled >= set(subjects)
            and meta.get("split") == split_settings
            and (out_dir / "manifest.csv").is_file()
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable manifest %s (%s); re-preparing", manifest_json, exc)
        return PreviousRun()
    return prev


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_subjects(
    jobs: Sequence[dict], process: Callable[[dict], dict], workers: int, desc: str, progress: bool = True
) -> tuple[dict[str, dict], float]:
    """Run ``process`` on every job (in ``workers`` processes when > 1); results by subject, seconds."""
    from tqdm.auto import tqdm

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=desc, unit="subject", disable=not progress or not jobs)
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            results[job["subject"]] = process(job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_init_worker) as pool:
            for fut in as_completed([pool.submit(process, job) for job in jobs]):
                res = fut.result()
                results[res["subject"]] = res
                bar.update()
    bar.close()
    return results, time.perf_counter() - t0


def write_prepared(
    out_dir: Path,
    results: dict[str, dict],
    previous: PreviousRun,
    manifest_columns: Sequence[str],
    meta: dict,
    assignment: dict[str, str] | None,
    split_seed: int,
    workers: int,
    elapsed_s: float,
    annotate: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Merge results with the settled subjects, split by subject and write the outputs.

    Args:
        out_dir: dataset directory.
        results: per-subject results of this run.
        previous: the previous run (its settled subjects are kept as they were).
        manifest_columns: columns of ``manifest.csv``.
        meta: extra ``manifest.json`` fields (digest, settings, split settings, ...).
        assignment: imported split lists (subject -> split), or None for the reference protocol.
        split_seed: random state of the reference split.
        workers: worker count (recorded with the timing).
        elapsed_s: processing time of this run.
        annotate: optional per-row hook run after the split is set (e.g. fracture grades).

    Returns:
        The manifest rows (an empty list is logged as a warning naming ``report.csv``).
    """
    merged = {
        s: {"subject": s, "rows": previous.rows.get(s, []), "skipped": previous.skipped.get(s, [])}
        for s in previous.settled
        if s in meta["subjects"]
    }
    merged.update(results)
    rows = [r for s in sorted(merged) for r in merged[s]["rows"]]
    skipped = [k for s in sorted(merged) for k in merged[s]["skipped"]]
    reused = {r["sample_id"] for rs in previous.rows.values() for r in rs}
    new = sum(1 for r in rows if r["sample_id"] not in reused)
    rate = new / (elapsed_s / 60.0) if elapsed_s > 0 and new else 0.0

    kept = sorted({r["subject"] for r in rows})
    split_of = (
        {s: assignment.get(s, "unlisted") for s in kept}
        if assignment is not None
        else reference_split(kept, seed=split_seed)
    )
    for r in rows:
        r["split"] = split_of[r["subject"]]
        if annotate is not None:
            annotate(r)

    report = [
        {"subject": r["subject"], "sample_id": r["sample_id"], "status": "prepared", "reason": ""}
        for r in rows
    ]
    report += [
        {
            "subject": s["subject"],
            "sample_id": s["sample_id"],
            "status": "failed" if s.get("failed") else "skipped",
            "reason": s["reason"],
        }
        for s in skipped
    ]
    write_csv_atomic(pd.DataFrame(report, columns=REPORT_COLUMNS), out_dir / "report.csv")
    write_csv_atomic(pd.DataFrame(rows, columns=list(manifest_columns)), out_dir / "manifest.csv")
    write_json_atomic(
        {
            **meta,
            "complete": not any(s.get("failed") for s in skipped),
            "orientation": "PIR",
            "units": "HU",
            "samples": rows,
            "skipped": skipped,
            "timing": {
                "workers": workers,
                "seconds": round(elapsed_s, 3),
                "new_samples": new,
                "samples_per_min": round(rate, 2),
            },
        },
        out_dir / "manifest.json",
    )
    for s in skipped:
        log.info("%s %s: %s", "failed" if s.get("failed") else "skipped", s["sample_id"], s["reason"])
    log.info("%d new samples in %.1f s (%.1f samples/min, %d workers)", new, elapsed_s, rate, workers)
    if not rows:
        log.warning("no sample could be prepared from %s; see %s", meta.get("raw_dir"), out_dir / "report.csv")
    return rows
