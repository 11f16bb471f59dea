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
``manifest.json`` (settings digest, samples, skipped with reasons), written last and atomically, by the
skeleton of :mod:`xray3d.data.sources.base`. Bad subjects (corrupt/truncated file, missing segmentation,
CT/seg geometry mismatch, non-integral float labels, NaN CT) are skipped with their reason, marked
``failed`` and retried by the next run; rule rejections are final for the given settings. A subject
folder holding two candidates for one file (``ct.nii.gz`` and ``ct.nii``; ``segmentations/`` and
``seg.nii.gz``, ...) is refused as ambiguous, naming both. A re-run with the same settings redoes only
missing or failed samples. The split (:func:`xray3d.data.sources.splits.reference_split` over the
kept subjects, duplicate scans kept together, or imported lists) is recomputed on every run: it depends on the set of
kept subjects, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from xray3d.data.io import DataError
from xray3d.data.roi import label_centroid_mm, largest_component, touches_border
from xray3d.data.sources import base
from xray3d.data.sources.base import Candidate, FileHit, Preparer, Rejected, Scan

__all__ = [
    "prepare_totalseg",
    "find_subjects",
    "TOTALSEG_V2_IDS",
    "TASK_STRUCTURES",
    "Rules",
    "MANIFEST_COLUMNS",
    "TotalsegPreparer",
    "has_implant",
    "main",
]

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
MANIFEST_COLUMNS = base.manifest_columns("side", "level", "implant")


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


# ----------------------------------------------------------------------------------------------------------
# reading one subject


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _load_subject(
    folder: Path, files: dict[str, Path | None], names: list[str]
) -> tuple[nib.Nifti1Image, dict[str, np.ndarray]]:
    """CT (HU) and one boolean mask per structure, from either TotalSegmentator layout."""
    ct_path, seg_path = files["ct"], files["seg"]
    if ct_path is None:
        raise DataError(f"missing CT: no {' or '.join(CT_NAMES)} in {folder.name}")
    ct = base.load_ct(ct_path)
    masks: dict[str, np.ndarray] = {}
    seg_dir = folder / "segmentations"
    if seg_path == seg_dir:  # v1: one binary file per structure
        for name in names:
            path = _find(seg_dir, (f"{name}.nii.gz", f"{name}.nii"))
            if path is None:
                raise DataError(f"missing segmentation: segmentations/{name}.nii.gz not in {folder.name}")
            masks[name] = base.load_labels(ct, path)[0] > 0
        return ct, masks
    if seg_path is None:
        raise DataError(
            f"missing segmentation: neither segmentations/ nor {', '.join(SEG_NAMES)} in {folder.name}"
        )
    labels = base.load_labels(ct, seg_path)[0]
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
# the preparer


def find_subjects(raw_dir: Path) -> list[Path]:
    """Subject folders (every non-hidden directory directly under ``raw_dir``), sorted by name."""
    if not raw_dir.is_dir():
        raise DataError(f"raw TotalSegmentator folder not found: {raw_dir}")
    return sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


class TotalsegPreparer(Preparer):
    """One TotalSegmentator task: femur (two samples per subject), hip or rib (see the module docstring)."""

    kinds = ("ct", "seg")
    manifest_columns = MANIFEST_COLUMNS
    raw_help = "folder of TotalSegmentator subject folders (sXXXX/)"
    out_example = "data/totalseg_femur"

    cli_options = {"--task": {"dest": "task", "required": True, "choices": sorted(TASK_STRUCTURES)}}

    no_files_hint = "expected subject folders sXXXX/ with ct.nii.gz and seg.nii.gz or segmentations/"

    def __init__(
        self,
        raw_dir: str | Path,
        out_dir: str | Path,
        task: str,
        *,
        min_femur_voxels: int = 30_000,
        reject_partial: bool = True,
        min_ribs: int = 24,
        **common: Any,
    ) -> None:
        """TotalSegmentator options (the common ones: :class:`~xray3d.data.sources.base.Preparer`).

        Args:
            raw_dir: folder of subject folders (v1 or v2 layout, see the module docstring).
            out_dir: output cache directory.
            task: ``"femur"``, ``"hip"`` or ``"rib"``.
            min_femur_voxels: femur rule threshold (native voxels; 0 keeps any femur).
            reject_partial: reject pelvises touching the scan border.
            min_ribs: minimum number of non-empty ribs.
            **common: options of every source.
        """
        if task not in TASK_STRUCTURES:
            raise ValueError(f"task must be one of {sorted(TASK_STRUCTURES)}, got {task!r}")
        super().__init__(raw_dir, out_dir, **common)
        self.anatomy, self.name = task, f"totalseg {task}"
        self.rules = Rules(
            min_femur_voxels=min_femur_voxels, reject_partial=reject_partial, min_ribs=min_ribs
        )

    def known_subjects(self) -> list[str]:
        return [p.name for p in find_subjects(self.raw_dir)]

    def find_files(self) -> Iterator[FileHit]:
        for folder in find_subjects(self.raw_dir):
            for kind, names in (("ct", CT_NAMES), ("seg", ("segmentations", *SEG_NAMES))):
                for name in names:
                    path = folder / name
                    if path.is_file() or (name == "segmentations" and path.is_dir()):
                        yield FileHit(folder.name, kind, "", path)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "task": self.anatomy, "rules": asdict(self.rules)}

    def meta_extra(self) -> dict[str, Any]:
        return {"mirrored": "femur_right samples: R axis (axis 2) of the PIR arrays flipped, affine kept"}

    def source_of(self, subject: str, files: dict[str, Path | None]) -> str:
        return f"{subject}/{files['ct'].name if files['ct'] else 'ct.nii.gz'}"

    def failure_id(self, subject: str) -> str:
        return f"{subject}_{self.anatomy}"

    def expected_ids(self, subject: str) -> list[str]:
        if self.anatomy == "femur":
            return [f"{subject}_femur_left", f"{subject}_femur_right"]
        return [self.failure_id(subject)]

    def load(self, job: dict[str, Any]) -> Scan:
        files = {k: (Path(v) if v else None) for k, v in job["files"].items()}
        ct, masks = _load_subject(self.raw_dir / job["subject"], files, TASK_STRUCTURES[self.anatomy])
        return Scan(ct, {"masks": masks})

    def samples(self, job: dict[str, Any], scan: Scan) -> Iterator[Candidate]:
        subject, task, rules, masks = job["subject"], self.anatomy, self.rules, scan.data["masks"]
        ct = scan.ct
        todo: list[
            tuple[str, str, np.ndarray, np.ndarray, bool]
        ] = []  # sample_id, side, mask, centre, mirror
        if task == "femur":
            sizes: dict[str, int] = {}
            for side in ("left", "right"):
                lcc = largest_component(masks[f"femur_{side}"])
                masks[f"femur_{side}"] = lcc
                sizes[side] = int(lcc.sum())
            small = [f"femur_{s} {n} voxels" for s, n in sizes.items() if n <= rules.min_femur_voxels]
            if small:
                raise Rejected(
                    f"30k rule: largest component of {', '.join(small)} <= {rules.min_femur_voxels} "
                    "(native grid)"
                )
            for side in ("left", "right"):
                m = masks[f"femur_{side}"]
                centre = _femur_centre(m, ct.affine, self.preset.roi_mm, rules.femur_headroom_mm)
                todo.append((f"{subject}_femur_{side}", side, m, centre, side == "right"))
        elif task == "hip":
            missing = [n for n in TASK_STRUCTURES["hip"] if not masks[n].any()]
            if missing:
                raise Rejected(f"partial pelvis: missing {', '.join(missing)}")
            merged = masks["hip_left"] | masks["hip_right"] | masks["sacrum"]
            if rules.reject_partial and touches_border(merged):
                raise Rejected("partial pelvis: touches the scan border")
            todo.append((f"{subject}_hip", "", merged, label_centroid_mm(merged, ct.affine), False))
        else:
            present = [n for n in RIBS if masks[n].any()]
            if len(present) < rules.min_ribs:
                raise Rejected(f"only {len(present)} of 24 ribs present")
            merged = np.zeros(ct.shape, dtype=bool)
            for n in present:
                merged |= masks[n]
            todo.append((f"{subject}_rib", "", merged, label_centroid_mm(merged, ct.affine), False))
        ct_data = np.asanyarray(ct.dataobj)
        spacing = nib.affines.voxel_sizes(ct.affine)
        for sample_id, side, mask, centre, mirror in todo:
            if sample_id in job["done"]:
                yield Candidate(sample_id, mask, centre)  # reused as it is; nothing is computed
                continue
            implant = has_implant(ct_data, mask, spacing, rules)
            meta = {"side": side, "level": "", "implant": implant}
            yield Candidate(sample_id, mask, centre, meta, mirror=mirror)


#: ``prepare_totalseg(raw_dir, out_dir, ...)``: see :meth:`TotalsegPreparer.run` and the constructor's options
prepare_totalseg = TotalsegPreparer.run


#: ``xray3d-prepare-totalseg``: the command-line entry point
main = TotalsegPreparer.main


if __name__ == "__main__":
    raise SystemExit(main())
