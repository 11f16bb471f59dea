"""CTPelvic1K hip domain-shift test set (spec §2.1, §2.2, §2.4, §2.6).

Source and file names (checked against the public material, not against a download):

* Zenodo record 4588403 ships the masks of all seven subsets and the CTs of the two clinical ones:
  ``CTPelvic1K_dataset<k>_mask_mappingback.tar.gz`` (k = 1..5),
  ``CTPelvic1K_dataset6_Anonymized_mask.tar.gz``, ``CTPelvic1K_dataset7_mask.tar.gz``,
  ``CTPelvic1K_dataset6_data.tar.gz`` and ``CTPelvic1K_dataset7_data.tar.gz`` (archive names and md5s
  listed in XrayTo3DPreprocess ``workflow/ctpelvic1k/download_links/*.csv``).
* Masks are ``dataset<k>_<case>_mask_4label.nii.gz`` (e.g. ``dataset6_CLINIC_0001_mask_4label.nii.gz``,
  ``dataset4_case_00014_mask_4label.nii.gz``, ``dataset1_img0073_mask_4label.nii.gz``); the CLINIC-METAL
  masks come without the prefix (``CLINIC_metal_0003_mask_4label.nii.gz``). CTs are
  ``dataset<k>_<case>_data.nii.gz`` (``dataset7_CLINIC_metal_0003_data.nii.gz``), the naming that
  CTPelvic1K's own conversion script (MIRACLE-Center/CTPelvic1K,
  ``nnunet/dataset_conversion/JstPelvisSegmentation_5label.py``) expects for every subset.
* Subsets (CTPelvic1K README): dataset1 ABDOMEN, 2 COLONOG, 3 MSD_T10, 4 KITS19, 5 CERVIX, 6 CLINIC,
  7 CLINIC-METAL (post-operative scans with metal).
* Labels (the ``dataset.json`` written by that conversion script): 1 sacrum, 2 right_hip, 3 left_hip,
  4 lumbar_vertebra. The hip task merges 1, 2 and 3 (as the reference's ``change_label({1,2,3} -> 1)``), so
  the side convention does not change the samples; it only names the structure in a rejection reason.

Raw input: any folder tree under ``raw_dir`` (found by a recursive glob, as extracted from the archives).
The CTs of subsets 1-5 are not on Zenodo: take them from the original datasets (BTCV Abdomen/Cervix,
TCIA CT COLONOGRAPHY, MSD Task10_Colon, KiTS19) and save each one as ``dataset<k>_<case>_data.nii.gz``
anywhere under ``raw_dir``; a mask whose CT is missing fails with the exact file name to provide.

Task: ``sacrum + right_hip + left_hip`` merged, 288 mm ROI centred on the pelvis centroid, resampled to
128³ @ 2.25 mm (:data:`xray3d.data.roi.PRESETS` ``"hip"``), PIR, CT in HU; same rules as the TotalSegmentator
hip task: a missing structure or a merged mask that touches the scan border (partial pelvis) rejects the
case with its reason (``reject_partial=False`` keeps border cases). Manifest metadata: ``subset`` and
``dataset`` index, ``metal`` (the case belongs to CLINIC-METAL) and ``implant`` (a CT voxel > 2000 HU within
3 mm of the pelvis, the TotalSegmentator rule). Sample ids are ``<case>_hip``, the subject is the case id
without the ``dataset<k>_`` prefix (``CLINIC_0024``, ``CLINIC_metal_0003``, ``case_00014``, ``img0073``).

Split: CTPelvic1K is an evaluation-only domain-shift set; the reference evaluates every case of a subset
(spec §2.4), so by default every subject is put in split ``test``. ``split="reference"`` applies the
reference subject-level protocol instead and ``split_lists`` imports explicit lists. Outputs, resume,
atomic writes and failure handling are those of :mod:`xray3d.data.preparation` (``hip/<id>_ct.nii.gz`` and
``_msk.nii.gz``, ``manifest.csv``, ``report.csv``, ``manifest.json``).
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
from xray3d.data.roi import PRESETS, extract_roi, label_centroid_mm, touches_border
from xray3d.data.splits import load_split_lists
from xray3d.data.totalseg import Rules as TotalsegRules
from xray3d.data.totalseg import has_implant

__all__ = [
    "prepare_ctpelvic1k",
    "find_cases",
    "parse_name",
    "SUBSETS",
    "LABELS",
    "MANIFEST_COLUMNS",
    "Rules",
    "main",
]

log = logging.getLogger(__name__)

SUBSETS: dict[int, str] = {
    1: "ABDOMEN",
    2: "COLONOG",
    3: "MSD_T10",
    4: "KITS19",
    5: "CERVIX",
    6: "CLINIC",
    7: "CLINIC-METAL",
}
ORIGIN: dict[int, str] = {
    1: "BTCV Abdomen (Synapse, Multi-Atlas Labeling Beyond the Cranial Vault)",
    2: "TCIA CT COLONOGRAPHY (DICOM; convert the series to NIfTI)",
    3: "Medical Segmentation Decathlon Task10_Colon",
    4: "KiTS19 (case_XXXXX/imaging.nii.gz)",
    5: "BTCV Cervix (Synapse)",
}
MASK_ARCHIVES: dict[int, str] = {
    **{k: f"CTPelvic1K_dataset{k}_mask_mappingback.tar.gz" for k in range(1, 6)},
    6: "CTPelvic1K_dataset6_Anonymized_mask.tar.gz",
    7: "CTPelvic1K_dataset7_mask.tar.gz",
}
LABELS: dict[str, int] = {"sacrum": 1, "right_hip": 2, "left_hip": 3, "lumbar_vertebra": 4}
HIP_STRUCTURES = ("sacrum", "right_hip", "left_hip")
SUFFIXES: dict[str, tuple[str, ...]] = {
    "mask": ("_mask_4label.nii.gz", "_mask_4label.nii"),
    "ct": ("_data.nii.gz", "_data.nii"),
}
MANIFEST_COLUMNS = [
    "sample_id",
    "subject",
    "anatomy",
    "subset",
    "dataset",
    "metal",
    "implant",
    "split",
    "source",
    "spacing_mm",
    "shape",
    "voxels",
    "ct_path",
    "mask_path",
]
SPLIT_MODES = ("test", "reference")
PREP_VERSION = 1
_PREFIX = re.compile(r"^dataset(\d+)_(.+)$")


@dataclass(frozen=True)
class Rules:
    """Selection rules (defaults = the TotalSegmentator hip task's).

    Attributes:
        reject_partial: reject a pelvis whose merged mask touches the scan border (a missing structure
            always rejects).
        implant_hu: a CT voxel above this (HU) within ``implant_margin_mm`` of the pelvis flags an implant.
        implant_margin_mm: dilation of the pelvis mask for the implant test.
    """

    reject_partial: bool = True
    implant_hu: float = 2000.0
    implant_margin_mm: float = 3.0


class _Rejected(Exception):
    """A case fails a selection rule (final for these settings, not a failure)."""


# ----------------------------------------------------------------------------------------------------------
# naming


def parse_name(stem: str) -> tuple[str, int | None]:
    """Case id and subset index of a file stem without its suffix.

    ``dataset6_CLINIC_0001`` -> ``("CLINIC_0001", 6)``; the unprefixed CLINIC-METAL masks
    (``CLINIC_metal_0003``) -> 7, ``CLINIC_0001`` -> 6; any other unprefixed stem -> ``(stem, None)``.
    """
    m = _PREFIX.match(stem)
    if m:
        return m.group(2), int(m.group(1))
    if stem.lower().startswith("clinic_metal_"):
        return stem, 7
    if stem.lower().startswith("clinic_"):
        return stem, 6
    return stem, None


def _expected_ct(case: str, index: int | None) -> str:
    return f"dataset{index}_{case}_data.nii.gz" if index else f"<datasetK>_{case}_data.nii.gz"


def _missing_ct_hint(case: str, index: int | None) -> str:
    name = _expected_ct(case, index)
    if index in (6, 7):
        return f"missing CT {name}: extract CTPelvic1K_dataset{index}_data.tar.gz (Zenodo record 4588403)"
    origin = ORIGIN.get(index or 0, "its original dataset")
    return (
        f"missing CT {name}: CTPelvic1K ships only masks for this subset; take the scan from {origin} and "
        f"save it as {name} under the raw folder"
    )


def find_cases(raw_dir: Path) -> dict[str, dict[str, Any]]:
    """Case id -> ``{"mask", "ct", "index"}`` (paths None when missing), from a recursive glob.

    The first file in sorted path order wins when a case has several masks (or CTs).
    """
    if not raw_dir.is_dir():
        raise DataError(f"raw CTPelvic1K folder not found: {raw_dir}")
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(raw_dir.rglob("*")):
        rel = path.relative_to(raw_dir)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        for kind, suffixes in SUFFIXES.items():
            suffix = next((s for s in suffixes if path.name.endswith(s)), None)
            if suffix is None:
                continue
            case, index = parse_name(path.name[: -len(suffix)])
            entry = found.setdefault(case, {"mask": None, "ct": None, "index": None})
            if entry[kind] is None:
                entry[kind] = path
            if entry["index"] is None:
                entry["index"] = index
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------------------------------------------
# one case (runs in a worker process)


def _process_case(job: dict[str, Any]) -> dict[str, Any]:
    """Prepare the hip sample of one case; never raises (errors become skipped entries)."""
    subject, sample_id = job["subject"], f"{job['subject']}_hip"
    try:
        rows = _case_samples(job)
    except _Rejected as exc:
        return {"subject": subject, "rows": [], "skipped": [skip_entry(subject, sample_id, str(exc))]}
    except DataError as exc:
        return {"subject": subject, "rows": [], "skipped": [skip_entry(subject, sample_id, str(exc), True)]}
    except Exception as exc:  # one bad case must not stop the others
        reason = f"{type(exc).__name__}: {exc}"
        return {"subject": subject, "rows": [], "skipped": [skip_entry(subject, sample_id, reason, True)]}
    return {"subject": subject, "rows": rows, "skipped": []}


def _case_samples(job: dict[str, Any]) -> list[dict]:
    subject, index, rules = job["subject"], job["index"], Rules(**job["rules"])
    sample_id = f"{subject}_hip"
    out_dir = Path(job["out_dir"])
    if sample_id in job["done"]:
        return [job["done"][sample_id]]
    if index not in SUBSETS:
        raise DataError(
            f"cannot tell the CTPelvic1K subset of {subject}: name its files "
            f"dataset<k>_{subject}_... (k = 1..7)"
        )
    mask_path = Path(job["mask"]) if job["mask"] else None
    ct_path = Path(job["ct"]) if job["ct"] else None
    if mask_path is None:
        raise DataError(
            f"missing mask dataset{index}_{subject}_mask_4label.nii.gz: extract {MASK_ARCHIVES[index]} "
            "(Zenodo record 4588403)"
        )
    if ct_path is None:
        raise DataError(_missing_ct_hint(subject, index))
    ct = load_nifti(ct_path, "CT")
    if len(ct.shape) != 3:
        raise DataError(f"CT {ct_path.name} is not a 3D volume (shape {ct.shape})")
    ct_data = np.asanyarray(ct.dataobj)
    if not np.isfinite(ct_data).all():
        raise DataError(f"CT {ct_path.name} contains NaN/inf voxels")
    seg = load_nifti(mask_path, "mask")
    check_geometry(ct, seg, mask_path)
    labels = integral_labels(seg, mask_path)

    masks = {name: labels == LABELS[name] for name in HIP_STRUCTURES}
    missing = [f"{n} (label {LABELS[n]})" for n in HIP_STRUCTURES if not masks[n].any()]
    if missing:
        raise _Rejected(f"partial pelvis: missing {', '.join(missing)}")
    merged = masks["sacrum"] | masks["right_hip"] | masks["left_hip"]
    if rules.reject_partial and touches_border(merged):
        raise _Rejected("partial pelvis: touches the scan border")

    preset = PRESETS["hip"]
    ct_roi, msk_roi = extract_roi(
        ct, merged, label_centroid_mm(merged, ct.affine), preset.grid_size, preset.spacing_mm
    )
    voxels = int(np.asarray(msk_roi.dataobj).sum())
    if voxels == 0:
        raise _Rejected("empty mask after ROI extraction")
    spacing = np.sqrt((ct.affine[:3, :3] ** 2).sum(axis=0))
    implant_rules = TotalsegRules(implant_hu=rules.implant_hu, implant_margin_mm=rules.implant_margin_mm)
    rel_ct, rel_msk = f"hip/{sample_id}_ct.nii.gz", f"hip/{sample_id}_msk.nii.gz"
    save_nifti_atomic(ct_roi, out_dir / rel_ct)
    save_nifti_atomic(msk_roi, out_dir / rel_msk)
    return [
        {
            "sample_id": sample_id,
            "subject": subject,
            "anatomy": "hip",
            "subset": SUBSETS[index],
            "dataset": index,
            "metal": index == 7,
            "implant": has_implant(ct_data, merged, spacing, implant_rules),
            "split": "",
            "source": job["source"],
            "spacing_mm": preset.spacing_mm,
            "shape": "x".join([str(preset.grid_size)] * 3),
            "voxels": voxels,
            "ct_path": rel_ct,
            "mask_path": rel_msk,
        }
    ]


# ----------------------------------------------------------------------------------------------------------
# driver


def prepare_ctpelvic1k(
    raw_dir: str | Path,
    out_dir: str | Path,
    workers: int = 1,
    force: bool = False,
    split_seed: int = 12345,
    split_lists: str | Path | None = None,
    split: str = "test",
    *,
    reject_partial: bool = True,
    progress: bool = True,
) -> Path:
    """Prepare the CTPelvic1K hip ROIs (idempotent, resumable, atomic, parallel over cases).

    Args:
        raw_dir: folder holding the extracted CTPelvic1K files (any depth, see the module docstring).
        out_dir: output cache directory.
        workers: worker processes (1 = in this process).
        force: redo every sample.
        split_seed: random state of the reference split (``split="reference"`` only).
        split_lists: explicit split lists (see :func:`load_split_lists`); unlisted cases get ``"unlisted"``.
        split: ``"test"`` (every case in ``test``, the domain-shift protocol) or ``"reference"``.
        reject_partial: reject pelvises touching the scan border.
        progress: show a progress bar.

    Returns:
        Path of ``manifest.csv`` (possibly with no rows; reasons in ``manifest.json`` / ``report.csv``).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    rules = Rules(reject_partial=reject_partial)
    preset = PRESETS["hip"]
    settings = {
        "version": PREP_VERSION,
        "task": "ctpelvic1k_hip",
        "roi": [preset.roi_mm, preset.grid_size],
        "rules": asdict(rules),
    }
    settings_digest = digest(settings)
    cases = find_cases(raw_dir)
    if not cases:
        raise DataError(
            f"no CTPelvic1K file (*_mask_4label.nii.gz, *_data.nii.gz) under {raw_dir}; extract the archives "
            "of Zenodo record 4588403 there (see xray3d.data.ctpelvic1k)"
        )
    if split_lists:
        assignment: dict[str, str] | None = load_split_lists(split_lists)
    elif split == "test":
        assignment = dict.fromkeys(cases, "test")
    else:
        assignment = None
    split_settings = {"seed": split_seed, "test": 0.15, "val": 0.15, "mode": split, "lists": assignment}
    manifest_csv = out_dir / "manifest.csv"

    previous = load_previous(out_dir, settings_digest, cases, split_settings, force)
    if previous.up_to_date:
        log.info("ctpelvic1k hip already prepared in %s", out_dir)
        return manifest_csv
    jobs = [
        {
            "subject": case,
            "index": files["index"],
            "mask": str(files["mask"]) if files["mask"] else None,
            "ct": str(files["ct"]) if files["ct"] else None,
            "source": str(files["ct"].relative_to(raw_dir)) if files["ct"] else "",
            "out_dir": str(out_dir),
            "rules": asdict(rules),
            "done": {r["sample_id"]: r for r in previous.rows.get(case, [])},
        }
        for case, files in cases.items()
        if case not in previous.settled
    ]
    results, elapsed = run_subjects(jobs, _process_case, workers, "ctpelvic1k hip", progress)
    meta = {
        "digest": settings_digest,
        "settings": settings,
        "split": split_settings,
        "labels": LABELS,
        "raw_dir": str(raw_dir),
        "subjects": sorted(cases),
    }
    write_prepared(
        out_dir, results, previous, MANIFEST_COLUMNS, meta, assignment, split_seed, workers, elapsed
    )
    return manifest_csv


def main(argv: list[str] | None = None) -> int:
    """CLI: ``xray3d-prepare-ctpelvic1k --raw RAW --out OUT [--workers N] [--split reference]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_prepare_arguments(parser, "folder with the extracted CTPelvic1K files", "data/ctpelvic1k")
    parser.add_argument(
        "--split",
        choices=SPLIT_MODES,
        default="test",
        help="'test': every case in split test (domain-shift evaluation, default); 'reference': seeded split",
    )
    parser.add_argument(
        "--keep-partial", action="store_true", help="keep pelvises that touch the scan border"
    )
    args = parser.parse_args(argv)
    return run_prepare(
        lambda: prepare_ctpelvic1k(
            args.raw,
            args.out,
            workers=args.workers,
            force=args.force,
            split_seed=args.split_seed,
            split_lists=args.split_lists,
            split=args.split,
            reject_partial=not args.keep_partial,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
