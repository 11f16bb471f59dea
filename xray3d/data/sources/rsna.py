"""RSNA 2022 Cervical Spine Fracture Detection vertebra domain-shift set (spec §2.1, §2.2, §2.4-§2.6).

Raw input: the Kaggle competition data unzipped into ``raw_dir`` (``kaggle competitions download -c
rsna-2022-cervical-spine-fracture-detection``; the competition rules must be accepted on kaggle.com first):

* ``train_images/<StudyInstanceUID>/<n>.dcm``: one axial CT series per study (many files JPEG lossless);
* ``segmentations/<StudyInstanceUID>.nii``: vertebra labels 1-7 = C1-C7, 8-19 = T1-T12, for 87 studies only;
  these studies are the subjects;
* ``train.csv``: ``StudyInstanceUID, patient_overall, C1..C7`` fracture flags (0/1).

DICOM series (pydicom): every ``*.dcm`` of the study folder; one orientation (``ImageOrientationPatient``),
one size and pixel spacing; slices sorted by ``ImagePositionPatient`` projected on the slice normal; uniform
spacing (deviation < 2 % + 0.01 mm, else "inconsistent slice spacing" naming the two files, e.g. a missing
slice); HU = stored value x ``RescaleSlope`` + ``RescaleIntercept`` per slice. The volume is stored as
``[column, row, slice]`` with the affine built from the DICOM geometry (LPS) turned into NIfTI RAS (x and y
negated); a gantry tilt is kept as a sheared slice vector. Compressed transfer syntaxes are decoded through
pydicom's plugins; JPEG lossless / baseline needs ``pylibjpeg`` + ``pylibjpeg-libjpeg`` (project
dependencies). A corrupt, truncated or undecodable slice fails the study with the file name.

Segmentation orientation: the RSNA label NIfTIs do not share the DICOM array layout. Kaggle solutions load
them with ``seg[:, ::-1, ::-1].transpose(2, 1, 0)`` (or ``[:, ::-1]`` only, depending on the study's slice
order) to match images stacked in ``InstanceNumber`` order (e.g. the 3rd-place solution, darraghdog/RSNA22,
flips the slice axis only when ``ImagePositionPatient`` z decreases with the instance number). Put
together, the NIfTI array is ``[column, rows - 1 - row, slice by increasing z]``: our CT layout with the row
axis reversed, i.e. a dcm2niix-like "LAS" array for standard axial scans. We let the NIfTI header decide and
check it (:func:`seg_on_dicom_grid`): the labels are reoriented (axis flips/permutations only) from the
header's orientation to the CT's, and must then have the CT's shape and affine within half a voxel. The
manifest records the layout found: ``seg_layout="rsna"`` (the documented layout with a consistent header: the
rows are flipped back), ``"dicom"`` (already on the DICOM grid) or ``"reoriented (<axcodes>)"``. Anything
else fails the study as a geometry mismatch with the reason; with ``seg_affine="ignore"`` a segmentation of
the right shape whose header does not fit is assumed to be in the documented layout (``"rsna-assumed"``),
for headers known to be unreliable.

Task (reference ``preprocessing_vertebra_rsna.py``): one sample per vertebra label present; a vertebra whose
label touches the scan border is skipped with its reason; the largest 26-connected component of each
vertebra is kept; 96 mm ROI centred on that component's centroid, resampled to 64³ @ 1.5 mm
(:data:`xray3d.data.roi.PRESETS` ``"vertebra"``), PIR, CT in HU, binary mask. Sample ids are
``<StudyInstanceUID>_vert-<label>`` (VerSe numbering, :func:`xray3d.data.sources.verse.level_name`). Manifest
metadata: ``level``, ``level_group``, ``label``, ``fracture`` (1/0 from ``train.csv`` for C1-C7, empty for
thoracic levels, which the competition did not grade), ``patient_overall`` and ``seg_layout``. The split is
the reference subject-level protocol (test 0.15 then val 0.15, seed 12345; the reference evaluates on the
test split). Outputs, resume, atomic writes, failure handling, duplicate-scan detection and the ambiguity
rule (two segmentation files for one study, e.g. ``<uid>.nii`` and ``<uid>.nii.gz``, refuse the study) are
those of :mod:`xray3d.data.sources.base`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel import orientations as ornt
from scipy import ndimage

from xray3d.data.io import DataError, load_nifti
from xray3d.data.sources import base
from xray3d.data.sources.base import Candidate, FileHit, Preparer, Scan, Skip, SubjectFiles
from xray3d.data.sources.verse import level_group, level_name

__all__ = [
    "prepare_rsna",
    "read_dicom_series",
    "seg_on_dicom_grid",
    "load_train_csv",
    "find_studies",
    "KAGGLE_HINT",
    "MANIFEST_COLUMNS",
    "RsnaPreparer",
    "main",
]

log = logging.getLogger(__name__)

COMPETITION = "rsna-2022-cervical-spine-fracture-detection"
KAGGLE_HINT = (
    f"download the competition data with `kaggle competitions download -c {COMPETITION}` (accept the "
    "competition rules on kaggle.com first) and unzip it into the raw folder"
)
DECODER_HINT = (
    "install pydicom's decoder plugins: `pip install pylibjpeg pylibjpeg-libjpeg` (JPEG lossless/baseline), "
    "`pylibjpeg-openjpeg` (JPEG 2000), `pyjpegls` (JPEG-LS)"
)
VERTEBRA_LABELS = range(1, 20)  # 1-7 C1-C7, 8-19 T1-T12
SEG_AFFINE_MODES = ("check", "ignore")
MANIFEST_COLUMNS = base.manifest_columns(
    "level", "level_group", "label", "fracture", "patient_overall", "seg_layout"
)
ORIENTATION_ATOL = 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------------------------------------
# DICOM series


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return f"{path.parent.name}/{path.name}"


def _read_header(path: Path, root: Path | None) -> Any:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors, ...
        raise DataError(
            f"DICOM slice {_rel(path, root)} cannot be read ({type(exc).__name__}: {exc}); it is corrupt or "
            f"truncated: {KAGGLE_HINT}"
        ) from exc
    missing = [
        k
        for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
        if k not in ds
    ]
    if "PixelData" not in ds:
        missing.append("PixelData")
    if missing:
        raise DataError(f"DICOM slice {_rel(path, root)} lacks {', '.join(missing)}: not a CT image slice")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DataError(f"DICOM file {_rel(path, root)} is multi-frame; expected one slice per file")
    return ds


def _pixels(ds: Any, path: Path, root: Path | None) -> np.ndarray:
    """Stored pixel values of one slice; decoder problems become a :class:`DataError` naming the file."""
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        text = str(exc)
        compressed = bool(tsyntax is not None and tsyntax.is_compressed)
        if compressed and any(w in text.lower() for w in ("plugin", "missing", "dependenc", "no pixel data")):
            name = getattr(tsyntax, "name", str(tsyntax))
            raise DataError(
                f"cannot decode {_rel(path, root)} ({name}): {DECODER_HINT} (pydicom: {text})"
            ) from exc
        raise DataError(
            f"pixel data of {_rel(path, root)} cannot be decoded ({type(exc).__name__}: {text}); the file is "
            f"corrupt or truncated: {KAGGLE_HINT}"
        ) from exc
    if arr.shape != (int(ds.Rows), int(ds.Columns)):
        raise DataError(
            f"DICOM slice {_rel(path, root)} decodes to shape {arr.shape}, its header says "
            f"{(int(ds.Rows), int(ds.Columns))}"
        )
    return arr


def read_dicom_series(folder: str | Path, root: str | Path | None = None) -> nib.Nifti1Image:
    """Read one single-frame DICOM CT series into a NIfTI image in HU (see the module docstring).

    Args:
        folder: the series folder (every ``*.dcm`` in it is a slice).
        root: folder that file names in error messages are relative to (default: the series folder's parent).

    Returns:
        Image of shape ``(columns, rows, slices)``, slices by increasing position along the slice normal,
        RAS affine; int16 when the rescale is integral, else float32.

    Raises:
        DataError: missing/corrupt/undecodable slice, inconsistent orientation, size, spacing or positions.
    """
    folder = Path(folder)
    rootp = Path(root) if root is not None else folder.parent
    files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if not files:
        where = _rel(folder, rootp) + "/"
        raise DataError(f"missing DICOM series: no {where}*.dcm; {KAGGLE_HINT}")
    if len(files) < 2:
        raise DataError(f"DICOM series {_rel(folder, rootp)}/ has a single slice; a CT volume needs several")
    headers = [_read_header(f, rootp) for f in files]

    first, f0 = headers[0], files[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    size = (int(first.Rows), int(first.Columns))
    ps = np.asarray(first.PixelSpacing, dtype=float)
    for ds, f in zip(headers[1:], files[1:], strict=True):
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=ORIENTATION_ATOL):
            raise DataError(
                f"inconsistent ImageOrientationPatient in {_rel(folder, rootp)}/: {f.name} differs from "
                f"{f0.name}"
            )
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise DataError(
                f"inconsistent slice size in {_rel(folder, rootp)}/: {f.name} is {int(ds.Rows)}x"
                f"{int(ds.Columns)}, {f0.name} {size[0]}x{size[1]}"
            )
        if not np.allclose(np.asarray(ds.PixelSpacing, dtype=float), ps, atol=1e-4):
            raise DataError(
                f"inconsistent PixelSpacing in {_rel(folder, rootp)}/: {f.name} differs from {f0.name}"
            )
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DataError(f"ImageOrientationPatient of {_rel(f0, rootp)} is not two orthonormal directions")
    pos = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in headers])
    order = np.argsort(pos @ normal, kind="stable")
    pos, headers, files = pos[order], [headers[i] for i in order], [files[i] for i in order]
    dist = pos @ normal
    steps = np.diff(dist)
    spacing = float(np.median(steps))
    if spacing < 1e-3:
        dup = int(np.argmin(steps))
        raise DataError(
            f"duplicate slice position in {_rel(folder, rootp)}/: {files[dup].name} and {files[dup + 1].name}"
        )
    tol = 0.02 * spacing + 0.01
    bad = np.flatnonzero(np.abs(steps - spacing) > tol)
    if bad.size:
        k = int(bad[0])
        raise DataError(
            f"inconsistent slice spacing in {_rel(folder, rootp)}/: {files[k].name} -> {files[k + 1].name} "
            f"is {steps[k]:.3f} mm, the series' spacing is {spacing:.3f} mm (missing or extra slice?)"
        )
    step_vec = (pos[-1] - pos[0]) / (len(pos) - 1)
    off = np.abs(pos - (pos[0] + np.arange(len(pos))[:, None] * step_vec)).max(axis=1)
    if off.max() > tol:
        k = int(np.argmax(off))
        raise DataError(
            f"inconsistent ImagePositionPatient in {_rel(folder, rootp)}/: {files[k].name} is "
            f"{off[k]:.3f} mm off the line through the first and last slice"
        )

    slopes = [float(ds.get("RescaleSlope", 1.0) or 1.0) for ds in headers]
    inters = [float(ds.get("RescaleIntercept", 0.0) or 0.0) for ds in headers]
    integral = all(
        float(s).is_integer() and float(b).is_integer() for s, b in zip(slopes, inters, strict=True)
    )
    vol = np.empty((size[1], size[0], len(files)), dtype=np.float32)
    for k, (ds, f) in enumerate(zip(headers, files, strict=True)):
        vol[:, :, k] = (_pixels(ds, f, rootp).astype(np.float32) * slopes[k] + inters[k]).T
    if integral and vol.min(initial=0) >= -32768 and vol.max(initial=0) <= 32767:
        vol = vol.astype(np.int16)

    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]  # column index j moves along the row direction, by the column spacing
    lps[:3, 1] = col_dir * ps[0]  # row index i moves along the column direction, by the row spacing
    lps[:3, 2] = step_vec
    lps[:3, 3] = pos[0]
    img = nib.Nifti1Image(vol, LPS_TO_RAS @ lps)
    img.header.set_xyzt_units("mm")
    return img


# ----------------------------------------------------------------------------------------------------------
# segmentation


def _row_flip(rows: int) -> np.ndarray:
    """Index map (i -> rows - 1 - i on axis 1) as a 4x4 matrix."""
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, rows - 1.0
    return flip


def seg_on_dicom_grid(
    seg: nib.Nifti1Image, ct: nib.Nifti1Image, path: Path, seg_affine: str = "check"
) -> tuple[np.ndarray, str]:
    """An RSNA label map on the CT grid of :func:`read_dicom_series`, and the layout it was found in.

    The header decides: the label array is reoriented (axis flips/permutations only) from its affine's
    orientation to the CT's, and the result must share the CT's shape and affine within half a voxel.

    Args:
        seg: the segmentation NIfTI as loaded.
        ct: the CT read from the DICOM series.
        path: the segmentation file (for messages).
        seg_affine: ``"check"`` (the header must place the labels on the DICOM grid) or ``"ignore"`` (a header
            that does not is overruled by RSNA's documented layout, rows reversed).

    Returns:
        ``(labels, layout)``: int32 labels on the CT grid; layout ``"dicom"`` (already on the grid),
        ``"rsna"`` (the documented layout, rows reversed), ``"reoriented (<axcodes>)"`` (another
        flip/permutation) or ``"rsna-assumed"`` (header overruled).

    Raises:
        DataError: a shape or header that does not fit the DICOM grid (a geometry mismatch).
    """
    shape = tuple(seg.shape)
    if len(shape) == 4 and shape[3] == 1:
        seg = nib.Nifti1Image(np.asanyarray(seg.dataobj)[..., 0], seg.affine, seg.header)
        shape = shape[:3]
    if len(shape) != 3 or sorted(shape) != sorted(ct.shape):
        raise DataError(
            f"CT/segmentation geometry mismatch: {path.name} has shape {shape}, the DICOM series is "
            f"(columns, rows, slices) = {tuple(ct.shape)}"
        )
    labels = base.integral_labels(seg, path)
    tol = 0.5 * float(np.min(nib.affines.voxel_sizes(ct.affine)))
    trans = ornt.ornt_transform(nib.io_orientation(seg.affine), nib.io_orientation(ct.affine))
    moved = nib.Nifti1Image(labels, seg.affine).as_reoriented(trans)
    if moved.shape == tuple(ct.shape) and np.allclose(moved.affine[:3], ct.affine[:3], atol=tol):
        if np.allclose(seg.affine[:3], ct.affine[:3], atol=tol):
            layout = "dicom"
        elif np.allclose(seg.affine[:3], (ct.affine @ _row_flip(ct.shape[1]))[:3], atol=tol):
            layout = "rsna"
        else:
            layout = f"reoriented ({''.join(nib.aff2axcodes(seg.affine))})"
        return np.ascontiguousarray(np.asarray(moved.dataobj)), layout
    if seg_affine == "ignore" and shape == tuple(ct.shape):
        return np.ascontiguousarray(labels[:, ::-1, :]), "rsna-assumed"
    codes = "".join(nib.aff2axcodes(seg.affine))
    raise DataError(
        f"CT/segmentation geometry mismatch: the header of {path.name} ({codes}, shape {shape}, origin "
        f"{np.round(seg.affine[:3, 3], 1).tolist()} mm) does not place {path.name} on the DICOM grid within "
        f"{tol:.2f} mm; pass seg_affine='ignore' (--ignore-seg-affine) to assume RSNA's documented layout "
        "(DICOM rows reversed)"
    )


# ----------------------------------------------------------------------------------------------------------
# train.csv


def load_train_csv(path: Path) -> dict[str, dict[str, int]]:
    """``StudyInstanceUID -> {"patient_overall", "C1".."C7"}`` from the competition's ``train.csv``."""
    if not path.is_file():
        raise DataError(f"missing train.csv: expected {path}; {KAGGLE_HINT}")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise DataError(
            f"train.csv {path} cannot be read ({type(exc).__name__}: {exc}); {KAGGLE_HINT}"
        ) from exc
    cols = ["StudyInstanceUID", "patient_overall", *[f"C{i}" for i in range(1, 8)]]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"train.csv {path} lacks columns {missing} (columns: {list(df.columns)})")
    table: dict[str, dict[str, int]] = {}
    for rec in df[cols].to_dict("records"):
        try:
            table[str(rec["StudyInstanceUID"])] = {k: int(rec[k]) for k in cols[1:]}
        except (TypeError, ValueError) as exc:
            raise DataError(f"train.csv: non-integer fracture flag for {rec['StudyInstanceUID']}") from exc
    return table


# ----------------------------------------------------------------------------------------------------------
# the preparer


def _hits(raw_dir: Path) -> Iterator[FileHit]:
    seg_dir = raw_dir / "segmentations"
    if seg_dir.is_dir():
        for path in sorted(seg_dir.iterdir()):
            for suffix in (".nii.gz", ".nii"):
                if path.is_file() and path.name.endswith(suffix) and not path.name.startswith("."):
                    yield FileHit(path.name[: -len(suffix)], "seg", "", path)
                    break


def find_studies(raw_dir: Path) -> dict[str, Path | None]:
    """StudyInstanceUID -> segmentation file, for every ``segmentations/<uid>.nii[.gz]`` (None for a study
    with two segmentation files: the preparation refuses it, naming both)."""
    if not raw_dir.is_dir():
        raise DataError(f"raw RSNA folder not found: {raw_dir}; {KAGGLE_HINT}")
    return {uid: f.files["seg"] for uid, f in base.resolve_files(_hits(raw_dir), ("seg",), raw_dir).items()}


class RsnaPreparer(Preparer):
    """RSNA 2022 cervical spine: one vertebra ROI per segmented label (see the module docstring)."""

    name = "rsna cervical"
    anatomy = "vertebra"
    kinds = ("seg",)
    manifest_columns = MANIFEST_COLUMNS
    raw_help = "unzipped competition data (train_images/, segmentations/)"
    out_example = "data/rsna_cervical"

    cli_options = {
        "--ignore-seg-affine": {
            "dest": "seg_affine",
            "action": "store_const",
            "const": "ignore",
            "default": "check",
            "help": "assume RSNA's documented segmentation layout when the NIfTI header matches no layout",
        }
    }

    no_files_hint = f"missing segmentations: expected segmentations/<StudyInstanceUID>.nii; {KAGGLE_HINT}"

    def __init__(
        self, raw_dir: str | Path, out_dir: str | Path, *, seg_affine: str = "check", **common: Any
    ) -> None:
        """RSNA options (the common ones: :class:`~xray3d.data.sources.base.Preparer`).

        Args:
            raw_dir: the unzipped competition data (``train_images/``, ``segmentations/``, ``train.csv``).
            out_dir: output cache directory.
            seg_affine: ``"check"`` the segmentation header against the DICOM grid, or ``"ignore"`` it (see
                the module docstring).
            **common: options of every source.
        """
        if seg_affine not in SEG_AFFINE_MODES:
            raise ValueError(f"seg_affine must be one of {SEG_AFFINE_MODES}, got {seg_affine!r}")
        super().__init__(raw_dir, out_dir, **common)
        self.seg_affine = seg_affine
        self.train_csv = self.raw_dir / "train.csv"
        self.table: dict[str, dict[str, int]] = {}

    def find_files(self) -> Iterator[FileHit]:
        return _hits(self.raw_dir)

    def discover(self) -> dict[str, SubjectFiles]:
        studies = super().discover()
        self.table = load_train_csv(self.train_csv)
        unlisted = sorted(set(studies) - set(self.table))
        if unlisted:
            log.warning(
                "%d segmented studies are not in train.csv (no fracture flags): %s", len(unlisted), unlisted
            )
        return studies

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "task": "rsna_cervical", "seg_affine": self.seg_affine}

    def split_extra(self) -> dict[str, Any]:
        return {"train_csv": hashlib.sha1(self.train_csv.read_bytes()).hexdigest()[:12]}

    def source_of(self, subject: str, files: dict[str, Path | None]) -> str:
        return f"train_images/{subject}/"

    def annotate(self, row: dict[str, Any]) -> None:
        flags = self.table.get(row["subject"])
        label = int(row["label"])
        row["patient_overall"] = flags["patient_overall"] if flags else ""
        row["fracture"] = flags[f"C{label}"] if flags and 1 <= label <= 7 else ""

    def load(self, job: dict[str, Any]) -> Scan:
        subject, seg_path = job["subject"], Path(job["files"]["seg"])
        series = self.raw_dir / "train_images" / subject
        if not series.is_dir():
            raise DataError(
                f"missing DICOM series: expected train_images/{subject}/ under {self.raw_dir}; {KAGGLE_HINT}"
            )
        seg = load_nifti(seg_path, "segmentation", raw=True)
        ct = read_dicom_series(series, self.raw_dir)
        labels, layout = seg_on_dicom_grid(seg, ct, seg_path, self.seg_affine)
        return Scan(ct, {"labels": labels, "layout": layout, "seg": seg_path.name})

    def samples(self, job: dict[str, Any], scan: Scan) -> Iterator[Candidate | Skip]:
        subject, labels = job["subject"], scan.data["labels"]
        boxes = ndimage.find_objects(np.where((labels >= 1) & (labels <= max(VERTEBRA_LABELS)), labels, 0))
        if all(box is None for box in boxes):
            raise DataError(f"segmentation {scan.data['seg']} holds no vertebra label (1-19)")
        for label, box in enumerate(boxes, start=1):
            if box is None:
                continue
            sample_id = f"{subject}_vert-{label}"
            lo = np.array([s.start for s in box])
            hi = np.array([s.stop for s in box])
            if (lo == 0).any() or (hi == np.array(labels.shape)).any():
                yield Skip(sample_id, f"{level_name(label)} touches the scan border")
                continue
            mask, centre = base.label_component(labels, label, box, scan.ct.affine)
            meta = {
                "level": level_name(label),
                "level_group": level_group(label),
                "label": label,
                "fracture": "",
                "patient_overall": "",
                "seg_layout": scan.data["layout"],
            }
            yield Candidate(sample_id, mask, centre, meta, crop=True)


#: ``prepare_rsna(raw_dir, out_dir, ...)``: see :meth:`RsnaPreparer.run` and the constructor's options
prepare_rsna = RsnaPreparer.run


#: ``xray3d-prepare-rsna``: the command-line entry point
main = RsnaPreparer.main


if __name__ == "__main__":
    raise SystemExit(main())
