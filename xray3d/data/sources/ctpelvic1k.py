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
atomic writes, failure handling, duplicate-scan detection and the ambiguity rule are those of
:mod:`xray3d.data.sources.base` (``hip/<id>_ct.nii.gz`` and ``_msk.nii.gz``, ``manifest.csv``,
``report.csv``, ``manifest.json``). CTs and masks come from different archives, hence folders, so here a
case is ambiguous when two masks or two CTs carry its id (e.g. a stale copy in a backup folder): it is
refused with every path named, never resolved by path order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from xray3d.data.io import DataError
from xray3d.data.roi import label_centroid_mm, touches_border
from xray3d.data.sources import base
from xray3d.data.sources.base import Candidate, FileHit, Preparer, Rejected, Scan
from xray3d.data.sources.totalseg import Rules as TotalsegRules
from xray3d.data.sources.totalseg import has_implant

__all__ = [
    "prepare_ctpelvic1k",
    "find_cases",
    "parse_name",
    "SUBSETS",
    "LABELS",
    "MANIFEST_COLUMNS",
    "CTPelvic1kPreparer",
    "Rules",
    "main",
]

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
MANIFEST_COLUMNS = base.manifest_columns("subset", "dataset", "metal", "implant")
SPLIT_MODES = ("test", "reference")
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


def _hits(raw_dir: Path) -> Iterator[FileHit]:
    for path in base.visible_files(raw_dir):
        for kind, suffixes in SUFFIXES.items():
            suffix = next((s for s in suffixes if path.name.endswith(s)), None)
            if suffix is not None:
                yield FileHit(parse_name(path.name[: -len(suffix)])[0], kind, "", path)


def _index(files: dict[str, Path | None]) -> int | None:
    """Subset index of a case from its file names (the mask's first, as shipped)."""
    for kind in ("mask", "ct"):
        path = files.get(kind)
        if path is not None:
            index = parse_name(path.name[: -len(next(s for s in SUFFIXES[kind] if path.name.endswith(s)))])[1]
            if index is not None:
                return index
    return None


def find_cases(raw_dir: Path) -> dict[str, dict[str, Any]]:
    """Case id -> ``{"mask", "ct", "index"}`` (paths None when missing or ambiguous), from a recursive glob.

    A case with two masks (or two CTs) is ambiguous: its paths are None here, and the preparation refuses
    it with every path named (:func:`xray3d.data.sources.base.resolve_files`).
    """
    if not raw_dir.is_dir():
        raise DataError(f"raw CTPelvic1K folder not found: {raw_dir}")
    found = base.resolve_files(_hits(raw_dir), tuple(SUFFIXES), raw_dir)
    return {case: {**f.files, "index": _index(f.files)} for case, f in found.items()}


# ----------------------------------------------------------------------------------------------------------
# the preparer


class CTPelvic1kPreparer(Preparer):
    """CTPelvic1K: one merged-pelvis hip ROI per case (see the module docstring)."""

    name = "ctpelvic1k hip"
    anatomy = "hip"
    kinds = tuple(SUFFIXES)
    manifest_columns = MANIFEST_COLUMNS
    raw_help = "folder with the extracted CTPelvic1K files"
    out_example = "data/ctpelvic1k"

    cli_options = {
        "--split": {
            "dest": "split",
            "choices": SPLIT_MODES,
            "default": "test",
            "help": "'test': every case in split test (domain shift, default); 'reference': seeded split",
        },
        "--keep-partial": {
            "dest": "reject_partial",
            "action": "store_false",
            "help": "keep pelvises that touch the scan border",
        },
    }

    no_files_hint = (
        "expected *_mask_4label.nii.gz and *_data.nii.gz; extract the archives of Zenodo record 4588403 "
        "there (see xray3d.data.sources.ctpelvic1k)"
    )

    def __init__(
        self,
        raw_dir: str | Path,
        out_dir: str | Path,
        *,
        split: str = "test",
        reject_partial: bool = True,
        **common: Any,
    ) -> None:
        """CTPelvic1K options (the common ones: :class:`~xray3d.data.sources.base.Preparer`).

        Args:
            raw_dir: folder holding the extracted CTPelvic1K files (any depth, see the module docstring).
            out_dir: output cache directory.
            split: ``"test"`` (every case in ``test``, the domain-shift protocol) or ``"reference"`` (the
                seeded subject-level split); imported ``split_lists`` win over both.
            reject_partial: reject pelvises touching the scan border.
            **common: options of every source.
        """
        if split not in SPLIT_MODES:
            raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
        super().__init__(raw_dir, out_dir, **common)
        self.split, self.rules = split, Rules(reject_partial=reject_partial)

    def find_files(self) -> Iterator[FileHit]:
        return _hits(self.raw_dir)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "task": "ctpelvic1k_hip", "rules": asdict(self.rules)}

    def split_extra(self) -> dict[str, Any]:
        return {"mode": self.split}

    def assignment(self, subjects: list[str]) -> dict[str, str] | None:
        if self.split_lists or self.split != "test":
            return super().assignment(subjects)
        return dict.fromkeys(subjects, "test")

    def meta_extra(self) -> dict[str, Any]:
        return {"labels": LABELS}

    def job_extra(self, subject: str, files: dict[str, Path | None]) -> dict[str, Any]:
        return {"index": _index(files)}

    def failure_id(self, subject: str) -> str:
        return f"{subject}_hip"

    def load(self, job: dict[str, Any]) -> Scan:
        subject, index = job["subject"], job["index"]
        if index not in SUBSETS:
            raise DataError(
                f"cannot tell the CTPelvic1K subset of {subject}: name its files "
                f"dataset<k>_{subject}_... (k = 1..7)"
            )
        mask_path = Path(job["files"]["mask"]) if job["files"]["mask"] else None
        ct_path = Path(job["files"]["ct"]) if job["files"]["ct"] else None
        if mask_path is None:
            raise DataError(
                f"missing mask dataset{index}_{subject}_mask_4label.nii.gz: extract {MASK_ARCHIVES[index]} "
                "(Zenodo record 4588403)"
            )
        if ct_path is None:
            raise DataError(_missing_ct_hint(subject, index))
        ct = base.load_ct(ct_path)
        return Scan(ct, {"labels": base.load_labels(ct, mask_path, "mask")[0]})

    def samples(self, job: dict[str, Any], scan: Scan) -> Iterator[Candidate]:
        subject, index, labels, rules = job["subject"], job["index"], scan.data["labels"], self.rules
        sample_id = f"{subject}_hip"
        if sample_id in job["done"]:
            yield Candidate(sample_id, labels, np.zeros(3))  # reused as it is; nothing is computed
            return
        masks = {name: labels == LABELS[name] for name in HIP_STRUCTURES}
        missing = [f"{n} (label {LABELS[n]})" for n in HIP_STRUCTURES if not masks[n].any()]
        if missing:
            raise Rejected(f"partial pelvis: missing {', '.join(missing)}")
        merged = masks["sacrum"] | masks["right_hip"] | masks["left_hip"]
        if rules.reject_partial and touches_border(merged):
            raise Rejected("partial pelvis: touches the scan border")
        implant_rules = TotalsegRules(implant_hu=rules.implant_hu, implant_margin_mm=rules.implant_margin_mm)
        spacing = nib.affines.voxel_sizes(scan.ct.affine)
        meta = {
            "subset": SUBSETS[index],
            "dataset": index,
            "metal": index == 7,
            "implant": has_implant(np.asanyarray(scan.ct.dataobj), merged, spacing, implant_rules),
        }
        yield Candidate(sample_id, merged, label_centroid_mm(merged, scan.ct.affine), meta)


#: ``prepare_ctpelvic1k(raw_dir, out_dir, ...)``: see :meth:`CTPelvic1kPreparer.run` and the constructor
prepare_ctpelvic1k = CTPelvic1kPreparer.run


#: ``xray3d-prepare-ctpelvic1k``: the command-line entry point
main = CTPelvic1kPreparer.main


if __name__ == "__main__":
    raise SystemExit(main())
