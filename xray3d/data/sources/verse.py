"""VerSe 2019 vertebra dataset (spec §2.1, §2.2, §2.6, §7).

Raw input under ``raw_dir``, in any layout VerSe 2019 was published in (found by a recursive glob on the
file names, so all work and may be mixed in one tree):

* BIDS-like ("subject based" release): ``rawdata/<sub>/<sub>_ct.nii.gz`` +
  ``derivatives/<sub>/<sub>_seg-vert_msk.nii.gz`` + ``derivatives/<sub>/<sub>_seg-subreg_ctd.json``
  (subjects such as ``sub-verse410_split-verse227`` too);
* flat: ``<sub>_ct.nii.gz``, ``<sub>_seg-vert_msk.nii.gz`` and ``<sub>_seg-subreg_ctd.json`` side by side;
* pre-BIDS (the original MICCAI 2019 challenge release, verse2020.grand-challenge.org/VerSe_at_MICCAI19):
  ``verse004.nii.gz`` (CT), ``verse004_seg.nii.gz`` (mask) and ``verse004_ctd.json`` (centroids) side by
  side; the subject id becomes ``sub-verse004``. A subject present in both BIDS and pre-BIDS form uses one
  layout only (the complete one; a subject complete in both is refused as ambiguous), never a mix.

One sample per vertebra with a centroid in the ctd file (the reference's ``extract_around_centroid_v2``):
a 96 mm ROI resampled to 64³ @ 1.5 mm (:data:`xray3d.data.roi.PRESETS` ``"vertebra"``), PIR, CT in HU,
centred on the centroid; the target is that vertebra's label only, as a binary mask (largest connected
component; the reference keeps the label value, e.g. 16, we store {0, 1} like every other anatomy).
A label of the mask without a ctd entry is not dropped: its ROI is centred on the centroid of its largest
connected component, and ``centroid_source`` (``ctd`` / ``mask``, in ``manifest.csv`` and
``manifest.json``) and the note in ``report.csv`` say so (a mask centroid lies some 10 mm posterior to the
vertebral-body centroid of a ctd file).
Sample ids are ``<sub>_vert-<label>``.

Centroids: in BIDS files the first ctd entry gives the axis directions (e.g. ``["P", "I", "R"]``); the
others give ``{label, X, Y, Z}`` as voxel coordinates of the image *reoriented* (nibabel orientations, axis
permutations and flips only) to those directions. We map them to world (RAS, mm) through the mask's affine
composed with that reorientation, so any (oblique) orientation of the mask works; for a PIR image and a
``P, I, R`` ctd the coordinates are simply the voxel indices. Pre-BIDS ctd files have no direction entry:
the challenge page defines X: S->I, Y: A->P, Z: R->L in millimetres from the superior-right-anterior corner,
i.e. the directions (I, P, L) (:data:`PREBIDS_DIRECTION`); we divide by that frame's voxel sizes (so
voxel index = mm / spacing, the first voxel centre at 0 mm; the page does not say whether 0 mm is the first
voxel's centre or its outer edge, a half-voxel ambiguity) and proceed as above.

Masks with float labels are rounded (non-integral ones are refused). Outputs, resume, atomic writes,
failure handling, the ambiguity rule (a subject's files come from one copy: one folder, with BIDS
``rawdata/<sub>/`` + ``derivatives/<sub>/`` counted as one, and one layout) and duplicate-scan detection
are those of :mod:`xray3d.data.sources.base`: ``vertebra/<sample_id>_ct.nii.gz`` / ``_msk.nii.gz``,
``manifest.csv`` (:data:`MANIFEST_COLUMNS`), ``report.csv`` and ``manifest.json``. Subjects with a missing,
corrupt or mismatched file are marked ``failed`` and retried by the next run; a centroid whose label is
absent from the mask, or an ROI with an empty mask, is skipped for good. Fracture grades/shapes (spec §7)
come from the VerSe appendix (:func:`load_fracture_table`) and the split
(:func:`xray3d.data.sources.splits.reference_split`, by subject) are recomputed on every run.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel import orientations as ornt
from scipy import ndimage

from xray3d.data.io import DataError
from xray3d.data.sources import base
from xray3d.data.sources.base import Candidate, FileHit, Preparer, Scan, Skip

__all__ = [
    "prepare_verse",
    "load_fracture_table",
    "centroids_world",
    "read_ctd",
    "read_ctd_units",
    "find_subjects",
    "subject_layout",
    "PREBIDS_DIRECTION",
    "level_name",
    "level_group",
    "verse_number",
    "MANIFEST_COLUMNS",
    "VersePreparer",
    "main",
]

log = logging.getLogger(__name__)

SUFFIXES: dict[str, tuple[str, ...]] = {
    "ct": ("_ct.nii.gz", "_ct.nii"),
    "mask": ("_seg-vert_msk.nii.gz", "_seg-vert_msk.nii"),
    "ctd": ("_seg-subreg_ctd.json",),
}
# Original MICCAI 2019 challenge names (pre-BIDS); group 1 is the VerSe id (subject ``sub-<id>``).
PREBIDS_PATTERNS: dict[str, re.Pattern[str]] = {
    "ct": re.compile(r"^(verse\d+)\.nii(?:\.gz)?$"),
    "mask": re.compile(r"^(verse\d+)_seg\.nii(?:\.gz)?$"),
    "ctd": re.compile(r"^(verse\d+)_ctd\.json$"),
}
PREBIDS_DIRECTION = ("I", "P", "L")  # X: S->I, Y: A->P, Z: R->L (nibabel codes name where an axis goes)
FRACTURE_SHEET = "VerSe_dataset"
MANIFEST_COLUMNS = base.manifest_columns(
    "level", "level_group", "label", "centroid_source", "fracture_grade", "fracture_shape"
)
GRADES = {"0": "none", "1": "mild", "2": "moderate", "3": "severe", "x": "foreign"}
SHAPES = {"0": "none", "1": "wedge", "2": "biconcave", "3": "crush", "x": "foreign"}
TABLE_LEVELS = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)]


# ----------------------------------------------------------------------------------------------------------
# naming and metadata


def level_name(label: int) -> str:
    """VerSe label -> level name: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 28 T13 (else ``label<n>``)."""
    if 1 <= label <= 7:
        return f"C{label}"
    if 8 <= label <= 19:
        return f"T{label - 7}"
    if 20 <= label <= 25:
        return f"L{label - 19}"
    return "T13" if label == 28 else f"label{label}"


def level_group(label: int) -> str:
    """Subgroup of spec §7: cervical 1-7, thoracic 8-19, lumbar 20-24, ``other`` (L6 = 25, T13, ...)."""
    if 1 <= label <= 7:
        return "cervical"
    if 8 <= label <= 19:
        return "thoracic"
    if 20 <= label <= 24:
        return "lumbar"
    return "other"


def verse_number(subject: str) -> int | None:
    """VerSe number of a subject id: the last number (``sub-verse410_split-verse227`` -> 227)."""
    nums = re.findall(r"\d+", subject)
    return int(nums[-1]) if nums else None


def _code(value: Any, codes: dict[str, str], where: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return codes["0"]  # NaN = 0 (normal), as the reference
    text = str(value).strip().lower()
    if text in ("", "nan"):
        return codes["0"]
    try:
        text = str(int(float(text))) if float(text) == int(float(text)) else text
    except ValueError:
        pass
    if text not in codes:
        raise DataError(f"fracture table: unexpected code {value!r} in {where} (allowed: {sorted(codes)})")
    return codes[text]


def load_fracture_table(path: str | Path) -> dict[int, dict[str, tuple[str, str]]]:
    """Read the VerSe appendix (Löffler et al. 2020): the ``.xlsx`` (sheet ``VerSe_dataset``) or a CSV export.

    Columns used: ``verse_ID`` and ``{T1..L6}_fx-g`` (Genant grade) / ``{T1..L6}_fx-s`` (shape); codes
    0-3 and ``x`` (foreign material), NaN = 0. ``.xlsx`` is read with openpyxl (a dependency).

    Args:
        path: ``.xlsx`` workbook with a sheet ``VerSe_dataset``, or that sheet exported as CSV.

    Returns:
        verse number -> level name -> ``(grade, shape)``, with names from :data:`GRADES` / :data:`SHAPES`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"fracture table not found: {path}")
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            engine = "openpyxl" if path.suffix.lower() == ".xlsx" else None
            with pd.ExcelFile(path, engine=engine) as book:
                sheets = [str(name) for name in book.sheet_names]
                if FRACTURE_SHEET not in sheets:
                    raise DataError(
                        f"fracture table {path.name} has no sheet '{FRACTURE_SHEET}' (sheets: {sheets}); "
                        "pass the VerSe appendix workbook or that sheet exported as CSV"
                    )
                df = book.parse(FRACTURE_SHEET)
        else:
            df = pd.read_csv(path)
    except DataError:
        raise
    except ImportError as exc:
        raise DataError(
            f"cannot read {path.name} ({exc}): export the sheet '{FRACTURE_SHEET}' as CSV and pass that "
            "file, or install openpyxl"
        ) from exc
    except Exception as exc:
        raise DataError(f"fracture table {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if "verse_ID" not in df.columns:
        raise DataError(f"fracture table {path.name} has no verse_ID column (columns: {list(df.columns)})")
    table: dict[int, dict[str, tuple[str, str]]] = {}
    for rec in df.to_dict("records"):
        num = verse_number(str(rec["verse_ID"]))
        if num is None:
            continue
        levels = {}
        for lv in TABLE_LEVELS:
            if f"{lv}_fx-g" in rec or f"{lv}_fx-s" in rec:
                where = f"verse_ID {rec['verse_ID']} {lv}"
                levels[lv] = (
                    _code(rec.get(f"{lv}_fx-g"), GRADES, where),
                    _code(rec.get(f"{lv}_fx-s"), SHAPES, where),
                )
        table[num] = levels
    return table


def _fracture(
    table: dict[int, dict[str, tuple[str, str]]] | None, subject: str, label: int
) -> tuple[str, str]:
    """(grade, shape) of one vertebra; ``("", "")`` for a subject not in the table.

    A level without annotation (cervical, T13, or a column missing from the table) counts as normal, like
    the reference's NaN = 0 (spec §7).
    """
    if table is None:
        return "", ""
    levels = table.get(verse_number(subject) or -1)
    if levels is None:
        return "", ""
    return levels.get(level_name(label), (GRADES["0"], SHAPES["0"]))


# ----------------------------------------------------------------------------------------------------------
# centroids


def read_ctd_units(path: Path) -> tuple[tuple[str, str, str], list[tuple[int, np.ndarray]], str]:
    """Axis directions, ``(label, [X, Y, Z])`` centroids and their units of a VerSe ``*_ctd.json`` file.

    A file with a direction entry (BIDS release) gives voxel coordinates (units ``"voxel"``); a pre-BIDS
    ``verseNNN_ctd.json`` without one gives millimetres on :data:`PREBIDS_DIRECTION` (units ``"mm"``).
    """
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, list):
            raise TypeError(f"expected a list of entries, got {type(entries).__name__}")
        directions = [tuple(e["direction"]) for e in entries if "direction" in e]
        cents = [
            (int(e["label"]), np.array([e["X"], e["Y"], e["Z"]], dtype=float))
            for e in entries
            if "label" in e
        ]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise DataError(f"centroid file {path.name} is corrupt ({type(exc).__name__}: {exc})") from exc
    if directions:
        direction, units = directions[0], "voxel"
    elif PREBIDS_PATTERNS["ctd"].match(path.name):
        direction, units = PREBIDS_DIRECTION, "mm"
    else:
        raise DataError(f"centroid file {path.name} has no direction entry")
    if len(direction) != 3:
        raise DataError(f"centroid file {path.name}: direction {direction} is not three axis codes")
    return direction, cents, units  # type: ignore[return-value]


def read_ctd(path: Path) -> tuple[tuple[str, str, str], list[tuple[int, np.ndarray]]]:
    """Axis directions and ``(label, [X, Y, Z])`` centroids of a ctd file, in the file's own units (voxels
    for BIDS files, mm for pre-BIDS ones; see :func:`read_ctd_units`)."""
    direction, cents, _ = read_ctd_units(path)
    return direction, cents


def centroids_world(
    direction: tuple[str, str, str],
    cents: list[tuple[int, np.ndarray]],
    affine: np.ndarray,
    shape: tuple,
    units: str = "voxel",
) -> dict[int, np.ndarray]:
    """World (RAS, mm) positions of ctd centroids.

    Args:
        direction: axis codes of the frame the centroids are given in (VerSe convention).
        cents: ``(label, [X, Y, Z])`` in that frame.
        affine: affine of the mask as stored.
        shape: shape of the mask as stored.
        units: ``"voxel"`` (indices of the image reoriented to ``direction``) or ``"mm"`` (those indices
            times that frame's voxel sizes, the pre-BIDS convention).

    Returns:
        label -> world position.
    """
    if units not in ("voxel", "mm"):
        raise ValueError(f"units must be 'voxel' or 'mm', got {units!r}")
    try:
        target = ornt.axcodes2ornt(direction)
    except ValueError as exc:
        raise DataError(f"centroid direction {direction} is not a valid axis code triple") from exc
    trans = ornt.ornt_transform(nib.io_orientation(affine), target)
    aff = affine @ ornt.inv_ornt_aff(trans, shape[:3])
    scale = nib.affines.voxel_sizes(aff) if units == "mm" else np.ones(3)
    return {lab: aff[:3, :3] @ (xyz / scale) + aff[:3, 3] for lab, xyz in cents}


# ----------------------------------------------------------------------------------------------------------
# discovery


def _match(name: str) -> tuple[str, str, str] | None:
    """``(subject, kind, layout)`` of a VerSe file name, or None."""
    for kind, suffixes in SUFFIXES.items():
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        if suffix is not None and len(name) > len(suffix):
            return name[: -len(suffix)], kind, "bids"
    for kind, pattern in PREBIDS_PATTERNS.items():
        m = pattern.match(name)
        if m:
            return f"sub-{m.group(1)}", kind, "prebids"
    return None


def subject_layout(files: dict[str, Path | None]) -> str:
    """``"prebids"`` when a subject's files use the original challenge names, else ``"bids"``."""
    layouts = {hit[2] for p in files.values() if p is not None and (hit := _match(p.name)) is not None}
    return "prebids" if "prebids" in layouts else "bids"


def expected_name(subject: str, kind: str, layout: str) -> str:
    """File name a subject's ``kind`` file has in ``layout`` (for messages)."""
    if layout == "prebids":
        stem = subject.removeprefix("sub-")
        return {"ct": f"{stem}.nii.gz", "mask": f"{stem}_seg.nii.gz", "ctd": f"{stem}_ctd.json"}[kind]
    return f"{subject}{SUFFIXES[kind][0]}"


def _location(path: Path, subject: str, layout: str) -> str:
    """The copy of a subject a file belongs to: its folder, with BIDS ``rawdata/<sub>/`` and
    ``derivatives/<sub>/`` merged into their dataset root, and the layout (never mixed)."""
    folder = path.parent
    if folder.name == subject:
        folder = folder.parent
    if folder.name in ("rawdata", "derivatives"):
        folder = folder.parent
    return f"{folder}|{layout}"


def _hits(raw_dir: Path) -> Iterator[FileHit]:
    for path in base.visible_files(raw_dir):
        hit = _match(path.name)
        if hit is not None:
            subject, kind, layout = hit
            yield FileHit(subject, kind, _location(path, subject, layout), path)


def find_subjects(raw_dir: Path) -> dict[str, dict[str, Path | None]]:
    """Subject id -> ``{"ct", "mask", "ctd"}`` file (None when missing or ambiguous), from a recursive glob.

    BIDS (``<sub>_ct.nii.gz``, ...) and pre-BIDS (``verseNNN.nii.gz``, ``verseNNN_seg.nii.gz``,
    ``verseNNN_ctd.json``, subject ``sub-verseNNN``) names are recognised. A subject is any id with at least
    one of the three files. Its files are taken together from one copy (folder and layout), under the rule
    of :func:`xray3d.data.sources.base.resolve_files`: a subject whose files are spread over several copies
    uses the only complete one, and is refused (all None here, the reason in ``report.csv``) otherwise.
    """
    if not raw_dir.is_dir():
        raise DataError(f"raw VerSe folder not found: {raw_dir}")
    return {s: f.files for s, f in base.resolve_files(_hits(raw_dir), tuple(SUFFIXES), raw_dir).items()}


# ----------------------------------------------------------------------------------------------------------
# the preparer


def _labels_present(labels: np.ndarray) -> list[int]:
    """Positive labels of a label map (a bincount: much faster than ``np.unique`` on a whole scan)."""
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        return [int(v) for v in np.unique(labels) if v > 0]
    return [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(order="K"))) if v > 0]


class VersePreparer(Preparer):
    """VerSe 2019: one vertebra ROI per label of the mask (see the module docstring)."""

    name = "verse2019"
    anatomy = "vertebra"
    version = 2  # 2: mask labels without a ctd entry are prepared (centroid_source), no longer dropped
    kinds = tuple(SUFFIXES)
    manifest_columns = MANIFEST_COLUMNS
    raw_help = "VerSe 2019 folder (rawdata/ + derivatives/, flat, or pre-BIDS names)"
    out_example = "data/verse2019"

    cli_options = {
        "--fracture-table": {
            "dest": "fracture_table",
            "help": "VerSe appendix .xlsx (sheet 'VerSe_dataset') or that sheet as CSV",
        }
    }

    no_files_hint = (
        "expected *_ct.nii.gz, *_seg-vert_msk.nii.gz, *_seg-subreg_ctd.json, or pre-BIDS verseNNN.nii.gz, "
        "verseNNN_seg.nii.gz, verseNNN_ctd.json"
    )

    def __init__(
        self,
        raw_dir: str | Path,
        out_dir: str | Path,
        *,
        fracture_table: str | Path | None = None,
        **common: Any,
    ) -> None:
        """VerSe options (the common ones: :class:`~xray3d.data.sources.base.Preparer`).

        Args:
            raw_dir: VerSe folder (BIDS-like, flat or pre-BIDS layout, see the module docstring).
            out_dir: output cache directory.
            fracture_table: VerSe appendix, ``.xlsx`` or its sheet exported as CSV
                (:func:`load_fracture_table`); None leaves the fracture columns empty.
            **common: options of every source.
        """
        super().__init__(raw_dir, out_dir, **common)
        self.table_path = Path(fracture_table) if fracture_table else None
        self.table = load_fracture_table(self.table_path) if self.table_path else None

    def find_files(self) -> Iterator[FileHit]:
        return _hits(self.raw_dir)

    def split_extra(self) -> dict[str, Any]:
        return {"fracture_table": base.file_digest(self.table_path)}

    def meta_extra(self) -> dict[str, Any]:
        return {"fracture_table": str(self.table_path) if self.table_path else None}

    def job_extra(self, subject: str, files: dict[str, Path | None]) -> dict[str, Any]:
        return {"layout": subject_layout(files)}

    def annotate(self, row: dict[str, Any]) -> None:
        row["fracture_grade"], row["fracture_shape"] = _fracture(
            self.table, row["subject"], int(row["label"])
        )

    def load(self, job: dict[str, Any]) -> Scan:
        subject = job["subject"]
        files = {k: (Path(v) if v else None) for k, v in job["files"].items()}
        missing = [k for k in self.kinds if files[k] is None]
        if missing:
            what = {"ct": "CT", "mask": "vertebra mask", "ctd": "centroid file"}
            names = ", ".join(f"{what[k]} ({expected_name(subject, k, job['layout'])})" for k in missing)
            found = ", ".join(f"{files[k].name}" for k in self.kinds if files[k] is not None)
            raise DataError(f"missing {names} (found only {found} for {subject})")
        direction, cents, units = read_ctd_units(files["ctd"])
        if not cents:
            raise DataError(f"centroid file {files['ctd'].name} lists no vertebra")
        ct = base.load_ct(files["ct"])
        labels, mask_affine = base.load_labels(ct, files["mask"], "vertebra mask")
        centres = centroids_world(direction, cents, mask_affine, labels.shape, units)
        return Scan(ct, {"labels": labels, "centres": centres, "ctd": files["ctd"].name})

    def samples(self, job: dict[str, Any], scan: Scan) -> Iterator[Candidate | Skip]:
        """One sample per label with a ctd centroid, and one per mask label without (centred on the
        label's largest component, ``centroid_source="mask"``); ctd labels absent from the mask are
        skipped."""
        subject, labels, centres = job["subject"], scan.data["labels"], scan.data["centres"]
        present = _labels_present(labels)
        boxes: list | None = None
        for label in sorted(set(centres) | set(present)):
            sample_id = f"{subject}_vert-{label}"
            if label not in present:
                yield Skip(sample_id, f"centroid label {label} absent from the mask")
                continue
            meta = {"level": level_name(label), "level_group": level_group(label), "label": label}
            if label in centres:
                meta["centroid_source"] = "ctd"
                yield Candidate(sample_id, labels == label, centres[label], meta, crop=True, largest=True)
                continue
            boxes = boxes if boxes is not None else ndimage.find_objects(labels)
            mask, centre = base.label_component(labels, label, boxes[label - 1], scan.ct.affine)
            note = (
                f"{level_name(label)} (label {label}) is in the mask but not in {scan.data['ctd']}: ROI "
                "centred on the centroid of its largest connected component (centroid_source=mask)"
            )
            meta["centroid_source"] = "mask"
            yield Candidate(sample_id, mask, centre, meta, crop=True, note=note)


#: ``prepare_verse(raw_dir, out_dir, ...)``: see :meth:`VersePreparer.run` and the constructor's options
prepare_verse = VersePreparer.run


#: ``xray3d-prepare-verse``: the command-line entry point
main = VersePreparer.main


if __name__ == "__main__":
    raise SystemExit(main())
