"""TotalSegmentator femur / hip / rib datasets (spec §2.1, §2.2, §2.5, §2.6).

Raw input, one folder per subject under ``raw_dir``, in either layout TotalSegmentator ships:

* v1 dataset (Zenodo 6802614): ``sXXXX/ct.nii.gz`` + ``sXXXX/segmentations/<structure>.nii.gz``, one
  binary NIfTI per structure (``femur_left``, ``hip_right``, ``rib_left_3``, ...);
* v2 multi-label output: ``sXXXX/ct.nii.gz`` + ``sXXXX/seg.nii.gz`` (or ``segmentations.nii.gz``) holding
  the official v2 class ids (:data:`TOTALSEG_V2_IDS`).

Tasks (ROI cube and training grid from :data:`xray3d.data.roi.PRESETS`, PIR, CT in HU):

* ``femur``: ``femur_left`` and ``femur_right``, largest connected component of each; a subject is kept
  only if *both* components exceed ``min_femur_voxels`` (30,000) voxels at native resolution (the
  reference's ``subjects_30k`` rule; note that this count depends on the native spacing). Two samples per
  subject, ``<subject>_femur_left`` / ``<subject>_femur_right``, 128 mm at 128³ @ 1.0 mm. The right femur
  is mirrored to look like a left one: the R axis (axis 2) of its PIR ROI arrays is flipped and the affine
  kept, as the reference's ``mirror_image`` does (so a mirrored sample's world coordinates are not
  physical). Centring: on the bone centroid. The reference's ``extract_bbox_topleft`` instead centres x/y
  on the centroid and sets the z origin to ``bbox_size_z - roi_z + 3`` (a size used as an origin, spec
  §2.2/§9.10). We keep the centroid, except when the bone is longer (superior-inferior) than the ROI: then
  the ROI top is put ``femur_headroom_mm`` above the femoral head, so the *proximal* femur is kept (a
  centroid ROI would be mid-shaft and miss the head).
* ``hip``: ``hip_left`` + ``hip_right`` + ``sacrum`` merged; a partial pelvis is rejected automatically
  (one structure missing, or the merged mask touches the scan border) instead of the reference's manual
  list; 288 mm at 128³ @ 2.25 mm centred on the pelvis centroid.
* ``rib``: the 24 ribs merged; kept only if all 24 are non-empty; 320 mm at 128³ @ 2.5 mm.

Outputs under ``out_dir``: ``<task>/<sample_id>_ct.nii.gz`` and ``_msk.nii.gz``, ``manifest.csv``
(:data:`MANIFEST_COLUMNS`), ``report.csv`` (one line per prepared/skipped/failed sample) and
``manifest.json`` (settings digest, samples, skipped with reasons), written last and atomically. Bad subjects
(corrupt/truncated file, missing segmentation, CT/seg geometry mismatch, non-integral float labels, NaN
CT) are skipped with their reason, marked ``failed`` and retried by the next run; rule rejections are
final for the given settings. A re-run with the same settings redoes only missing or failed samples.
The split (:func:`xray3d.data.splits.reference_split` over the kept subjects, or imported lists) is
recomputed on every run: it depends on the set of kept subjects, as in the reference.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from xray3d.data.cli import add_prepare_arguments, run_prepare
from xray3d.data.io import DataError, load_nifti, save_nifti_atomic
from xray3d.data.preparation import (
    check_geometry,
    digest,
    integral_labels,
    load_previous,
    run_subjects,
    skip_entry,
    write_prepared,
)
from xray3d.data.roi import PRESETS, extract_roi, label_centroid_mm, largest_component, touches_border
from xray3d.data.splits import load_split_lists

__all__ = ["prepare_totalseg", "TOTALSEG_V2_IDS", "TASK_STRUCTURES", "Rules", "MANIFEST_COLUMNS", "has_implant", "main"]

log = logging.getLogger(__name__)

RIBS = [f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)]
# Official TotalSegmentator v2 class ids of the structures used here (task "total").
TOTALSEG_V2_IDS: dict[str, int] = {
    "sacrum": 25,
    "femur_left": 75,
    "femur_right": 76,
    "hip_left": 77,
    "hip_right": 78,
    **{f"rib_left_{i}": 91 + i for i in range(1, 13)},
    **{f"rib_right_{i}": 103 + i for i in range(1, 13)},
}
TASK_STRUCTURES: dict[str, list[str]] = {
    "femur": ["femur_left", "femur_right"],
    "hip": ["hip_left", "hip_right", "sacrum"],
    "rib": RIBS,
}
CT_NAMES = ("ct.nii.gz", "ct.nii")
SEG_NAMES = ("seg.nii.gz", "segmentations.nii.gz", "seg.nii", "segmentations.nii")
MANIFEST_COLUMNS = [
    "sample_id",
    "subject",
    "anatomy",
    "side",
    "level",
    "split",
    "source",
    "spacing_mm",
    "shape",
    "voxels",
    "implant",
    "ct_path",
    "mask_path",
]
PREP_VERSION = 1


@dataclass(frozen=True)
class Rules:
    """Selection and flagging rules (defaults = the reference's).

    Attributes:
        min_femur_voxels: each femur's largest component must have more voxels than this (native grid).
        reject_partial: reject a pelvis that touches the scan border (a missing structure always rejects).
        min_ribs: minimum number of non-empty ribs (of 24).
        implant_hu: a CT voxel above this (HU) inside the dilated bone mask flags an implant.
        implant_margin_mm: dilation of the bone mask for the implant test.
        femur_headroom_mm: space above the femoral head when the femur is longer than the ROI.
    """

    min_femur_voxels: int = 30_000
    reject_partial: bool = True
    min_ribs: int = 24
    implant_hu: float = 2000.0
    implant_margin_mm: float = 3.0
    femur_headroom_mm: float = 10.0


class _Rejected(Exception):
    """A subject fails a selection rule (final for these settings, not a failure)."""


# ----------------------------------------------------------------------------------------------------------
# reading one subject


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _load_subject(folder: Path, names: list[str]) -> tuple[nib.Nifti1Image, dict[str, np.ndarray]]:
    """CT (HU) and one boolean mask per structure, from either TotalSegmentator layout."""
    ct_path = _find(folder, CT_NAMES)
    if ct_path is None:
        raise DataError(f"missing CT: no {' or '.join(CT_NAMES)} in {folder.name}")
    ct = load_nifti(ct_path, "CT")
    if len(ct.shape) != 3:
        raise DataError(f"CT {ct_path.name} is not a 3D volume (shape {ct.shape})")
    if not np.isfinite(np.asanyarray(ct.dataobj)).all():
        raise DataError(f"CT {ct_path.name} contains NaN/inf voxels")
    masks: dict[str, np.ndarray] = {}
    seg_dir = folder / "segmentations"
    if seg_dir.is_dir():  # v1: one binary file per structure
        for name in names:
            path = _find(seg_dir, (f"{name}.nii.gz", f"{name}.nii"))
            if path is None:
                raise DataError(f"missing segmentation: segmentations/{name}.nii.gz not in {folder.name}")
            img = load_nifti(path, "segmentation")
            check_geometry(ct, img, path)
            masks[name] = integral_labels(img, path) > 0
        return ct, masks
    seg_path = _find(folder, SEG_NAMES)
    if seg_path is None:
        raise DataError(
            f"missing segmentation: neither segmentations/ nor {', '.join(SEG_NAMES)} in {folder.name}"
        )
    img = load_nifti(seg_path, "segmentation")
    check_geometry(ct, img, seg_path)
    labels = integral_labels(img, seg_path)
    for name in names:
        masks[name] = labels == TOTALSEG_V2_IDS[name]
    return ct, masks


def has_implant(ct: np.ndarray, mask: np.ndarray, spacing: np.ndarray, rules: Rules) -> bool:
    """Any CT voxel > ``rules.implant_hu`` within ``implant_margin_mm`` of the bone (native grid)."""
    it = max(1, math.ceil(rules.implant_margin_mm / float(np.min(spacing))))
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - it, 0)
    hi = np.minimum(idx.max(axis=0) + it + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    near = ndimage.binary_dilation(mask[box], iterations=it)
    return bool((ct[box][near] > rules.implant_hu).any())


def _femur_centre(mask: np.ndarray, affine: np.ndarray, roi_mm: float, headroom_mm: float) -> np.ndarray:
    """Centroid; for a femur longer than the ROI, moved along S-I so the head sits below the ROI top."""
    centre = label_centroid_mm(mask, affine)
    z = (affine[:3, :3] @ np.argwhere(mask).T + affine[:3, 3:4])[2]  # RAS: +z = superior (mm)
    if z.max() - z.min() > roi_mm - 2 * headroom_mm:
        centre[2] = z.max() + headroom_mm - roi_mm / 2.0
    return centre


# ----------------------------------------------------------------------------------------------------------
# one subject (runs in a worker process)


def _process_subject(job: dict[str, Any]) -> dict[str, Any]:
    """Prepare every sample of one subject; never raises (errors become skipped entries)."""
    subject, task = job["subject"], job["task"]
    try:
        rows, skipped = _subject_samples(job)
    except _Rejected as exc:
        ids = job["sample_ids"]
        return {"subject": subject, "rows": [], "skipped": [skip_entry(subject, s, str(exc)) for s in ids]}
    except DataError as exc:
        return {
            "subject": subject,
            "rows": [],
            "skipped": [skip_entry(subject, f"{subject}_{task}", str(exc), True)],
        }
    except Exception as exc:  # one bad subject must not stop the others
        reason = f"{type(exc).__name__}: {exc}"
        return {
            "subject": subject,
            "rows": [],
            "skipped": [skip_entry(subject, f"{subject}_{task}", reason, True)],
        }
    return {"subject": subject, "rows": rows, "skipped": skipped}


def _subject_samples(job: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    subject, task, rules = job["subject"], job["task"], Rules(**job["rules"])
    folder, out_dir, done = Path(job["folder"]), Path(job["out_dir"]), job["done"]
    preset = PRESETS[task]
    ct, masks = _load_subject(folder, TASK_STRUCTURES[task])
    ct_data = np.asanyarray(ct.dataobj)
    spacing = np.sqrt((ct.affine[:3, :3] ** 2).sum(axis=0))
    source = str(Path(job["folder_rel"]) / (_find(folder, CT_NAMES) or Path("ct.nii.gz")).name)

    todo: list[tuple[str, str, np.ndarray, np.ndarray, bool]] = []  # sample_id, side, mask, centre, mirror
    if task == "femur":
        sizes: dict[str, int] = {}
        for side in ("left", "right"):
            lcc = largest_component(masks[f"femur_{side}"])
            masks[f"femur_{side}"] = lcc
            sizes[side] = int(lcc.sum())
        small = [f"femur_{s} {n} voxels" for s, n in sizes.items() if n <= rules.min_femur_voxels]
        if small:
            raise _Rejected(
                f"30k rule: largest component of {', '.join(small)} <= {rules.min_femur_voxels} (native grid)"
            )
        for side in ("left", "right"):
            m = masks[f"femur_{side}"]
            centre = _femur_centre(m, ct.affine, preset.roi_mm, rules.femur_headroom_mm)
            todo.append((f"{subject}_femur_{side}", side, m, centre, side == "right"))
    elif task == "hip":
        missing = [n for n in TASK_STRUCTURES["hip"] if not masks[n].any()]
        if missing:
            raise _Rejected(f"partial pelvis: missing {', '.join(missing)}")
        merged = masks["hip_left"] | masks["hip_right"] | masks["sacrum"]
        if rules.reject_partial and touches_border(merged):
            raise _Rejected("partial pelvis: touches the scan border")
        todo.append((f"{subject}_hip", "", merged, label_centroid_mm(merged, ct.affine), False))
    else:
        present = [n for n in RIBS if masks[n].any()]
        if len(present) < rules.min_ribs:
            raise _Rejected(f"only {len(present)} of 24 ribs present")
        merged = np.zeros(ct.shape, dtype=bool)
        for n in present:
            merged |= masks[n]
        todo.append((f"{subject}_rib", "", merged, label_centroid_mm(merged, ct.affine), False))

    rows, skipped = [], []
    for sample_id, side, mask, centre, mirror in todo:
        if sample_id in done:
            rows.append(done[sample_id])
            continue
        rel_ct, rel_msk = f"{task}/{sample_id}_ct.nii.gz", f"{task}/{sample_id}_msk.nii.gz"
        ct_roi, msk_roi = extract_roi(ct, mask, centre, preset.grid_size, preset.spacing_mm)
        if mirror:  # flip the R axis of the PIR arrays, keep the affine (reference's mirror_image)
            ct_roi = nib.Nifti1Image(
                np.ascontiguousarray(ct_roi.get_fdata(dtype=np.float32)[:, :, ::-1]),
                ct_roi.affine,
                ct_roi.header,
            )
            msk_roi = nib.Nifti1Image(
                np.ascontiguousarray(np.asarray(msk_roi.dataobj)[:, :, ::-1]), msk_roi.affine, msk_roi.header
            )
        voxels = int(np.asarray(msk_roi.dataobj).sum())
        if voxels == 0:
            skipped.append(skip_entry(subject, sample_id, "empty mask after ROI extraction"))
            continue
        save_nifti_atomic(ct_roi, out_dir / rel_ct)
        save_nifti_atomic(msk_roi, out_dir / rel_msk)
        rows.append(
            {
                "sample_id": sample_id,
                "subject": subject,
                "anatomy": task,
                "side": side,
                "level": "",
                "split": "",
                "source": source,
                "spacing_mm": preset.spacing_mm,
                "shape": "x".join([str(preset.grid_size)] * 3),
                "voxels": voxels,
                "implant": has_implant(ct_data, mask, spacing, rules),
                "ct_path": rel_ct,
                "mask_path": rel_msk,
            }
        )
    return rows, skipped


# ----------------------------------------------------------------------------------------------------------
# driver


def find_subjects(raw_dir: Path) -> list[Path]:
    """Subject folders (every non-hidden directory directly under ``raw_dir``), sorted by name."""
    if not raw_dir.is_dir():
        raise DataError(f"raw TotalSegmentator folder not found: {raw_dir}")
    return sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _expected_ids(subject: str, task: str) -> list[str]:
    return [f"{subject}_femur_left", f"{subject}_femur_right"] if task == "femur" else [f"{subject}_{task}"]


def prepare_totalseg(
    raw_dir: str | Path,
    out_dir: str | Path,
    task: str,
    workers: int = 1,
    force: bool = False,
    split_seed: int = 12345,
    split_lists: str | Path | None = None,
    *,
    min_femur_voxels: int = 30_000,
    reject_partial: bool = True,
    min_ribs: int = 24,
    progress: bool = True,
) -> Path:
    """Prepare one TotalSegmentator task (idempotent, resumable, atomic, parallel over subjects).

    Args:
        raw_dir: folder of subject folders (v1 or v2 layout, see the module docstring).
        out_dir: output cache directory.
        task: ``"femur"``, ``"hip"`` or ``"rib"``.
        workers: worker processes (1 = in this process).
        force: redo every sample.
        split_seed: random state of the subject-level split (spec §2.5).
        split_lists: reference split lists to import instead (see :func:`load_split_lists`); subjects
            not listed get split ``"unlisted"``.
        min_femur_voxels: femur rule threshold (native voxels; 0 keeps any femur).
        reject_partial: reject pelvises touching the scan border.
        min_ribs: minimum number of non-empty ribs.
        progress: show a progress bar.

    Returns:
        Path of ``manifest.csv`` (possibly with no rows; reasons in ``manifest.json`` / ``report.csv``).
    """
    if task not in TASK_STRUCTURES:
        raise ValueError(f"task must be one of {sorted(TASK_STRUCTURES)}, got {task!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    rules = Rules(min_femur_voxels=min_femur_voxels, reject_partial=reject_partial, min_ribs=min_ribs)
    preset = PRESETS[task]
    settings = {
        "version": PREP_VERSION,
        "task": task,
        "roi": [preset.roi_mm, preset.grid_size],
        "rules": asdict(rules),
    }
    settings_digest = digest(settings)
    assignment = load_split_lists(split_lists) if split_lists else None
    split_settings = {"seed": split_seed, "test": 0.15, "val": 0.15, "lists": assignment}
    manifest_csv = out_dir / "manifest.csv"
    subjects = find_subjects(raw_dir)
    if not subjects:
        raise DataError(f"no subject folder in {raw_dir}")

    names = [p.name for p in subjects]
    previous = load_previous(out_dir, settings_digest, names, split_settings, force)
    if previous.up_to_date:
        log.info("totalseg %s already prepared in %s", task, out_dir)
        return manifest_csv
    jobs = [
        {
            "subject": folder.name,
            "task": task,
            "folder": str(folder),
            "folder_rel": folder.name,
            "out_dir": str(out_dir),
            "rules": asdict(rules),
            "done": {r["sample_id"]: r for r in previous.rows.get(folder.name, [])},
            "sample_ids": _expected_ids(folder.name, task),
        }
        for folder in subjects
        if folder.name not in previous.settled
    ]
    results, elapsed = run_subjects(jobs, _process_subject, workers, f"totalseg {task}", progress)
    meta = {
        "digest": settings_digest,
        "settings": settings,
        "split": split_settings,
        "mirrored": "femur_right samples: R axis (axis 2) of the PIR arrays flipped, affine kept",
        "raw_dir": str(raw_dir),
        "subjects": sorted(names),
    }
    write_prepared(
        out_dir, results, previous, MANIFEST_COLUMNS, meta, assignment, split_seed, workers, elapsed
    )
    return manifest_csv


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m xray3d.data.totalseg --task femur --raw RAW --out OUT [--workers N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASK_STRUCTURES))
    add_prepare_arguments(parser, "folder of TotalSegmentator subject folders (sXXXX/)", "data/totalseg_femur")
    args = parser.parse_args(argv)
    return run_prepare(
        lambda: prepare_totalseg(
            args.raw,
            args.out,
            args.task,
            workers=args.workers,
            force=args.force,
            split_seed=args.split_seed,
            split_lists=args.split_lists,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
