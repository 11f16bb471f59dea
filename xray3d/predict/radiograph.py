"""Read a radiograph (DICOM CR/DX, PNG/TIFF, NIfTI) and crop it to the model's input, as a training DRR.

Conventions:

* A radiograph is read as displayed: ``pixels[row, col]``, row 0 at the top. Its orientation is the
  DICOM ``PatientOrientation`` pair ``(along a row, down a column)``, one of the letters L, R, A, P, H
  (head), F (feet) each: e.g. ``("L", "F")`` for an AP view shown the radiological way (the patient's
  right on the viewer's left) and ``("P", "F")`` for a lateral view with the patient facing left.
* The model wants the training DRR layouts (``xray3d.data.projection``): AP ``(I, R)`` (rows toward the
  feet, columns toward the patient's right) and LAT ``(P, I)`` (rows toward posterior, columns toward the
  feet). :func:`crop_to_model` samples the radiograph straight into that layout.
* Pixel spacing is the detector's (``ImagerPixelSpacing``): the crop covers the model's field of view
  at the object (the isocentre plane of the training geometry) times the magnification
  ``source_to_detector_mm / source_to_object_mm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from xray3d.data.io import DataError

__all__ = [
    "Radiograph",
    "ViewGeometry",
    "MODEL_AXES",
    "DEFAULT_ORIENTATION",
    "read_radiograph",
    "check_same_study",
    "crop_to_model",
    "model_to_display",
    "detector_offsets_mm",
]

#: anatomical direction of (rows, columns) of each view in the model layout
MODEL_AXES: dict[str, tuple[str, str]] = {"ap": ("F", "R"), "lat": ("P", "F")}
#: default orientation of a radiograph without ``PatientOrientation``: the radiological display
DEFAULT_ORIENTATION: dict[str, tuple[str, str]] = {"ap": ("L", "F"), "lat": ("P", "F")}
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_RASTER_SUFFIXES = (".png", ".tif", ".tiff")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Radiograph:
    """One radiograph as displayed.

    Attributes:
        pixels: ``(rows, cols)`` float64 intensities, bone bright (MONOCHROME2 after the LUTs).
        spacing_mm: ``(row, col)`` pixel spacing at the detector, mm (None when the file has none).
        path: the file it came from.
        orientation: ``(along a row, down a column)`` patient directions, when the file says.
        study_uid / patient_id: DICOM identifiers (None for other formats).
        spacing_source: which tag or option the spacing came from.
        distances_mm: ``(source-to-object, source-to-detector)`` from the DICOM tags: the detector distance
            with the modality's estimated magnification, else with ``DistanceSourceToPatient`` (to the skin,
            so the magnification it implies is an upper bound).
        distances_source: the tags they came from.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None
    path: Path
    orientation: tuple[str, str] | None = None
    study_uid: str | None = None
    patient_id: str | None = None
    spacing_source: str = ""
    distances_mm: tuple[float, float] | None = None
    distances_source: str = ""


@dataclass(frozen=True)
class ViewGeometry:
    """Where and how to crop one view.

    Attributes:
        center_px: ``(row, col)`` of the bone's centre in the displayed image; None = the image centre.
        source_to_object_mm: X-ray source to the bone's centre.
        source_to_detector_mm: X-ray source to the detector.
        orientation: ``(along a row, down a column)``; None = the file's, else the radiological default.
    """

    center_px: tuple[float, float] | None
    source_to_object_mm: float
    source_to_detector_mm: float
    orientation: tuple[str, str] | None = None

    @property
    def magnification(self) -> float:
        """Detector size of an object at the isocentre divided by its true size."""
        return self.source_to_detector_mm / self.source_to_object_mm


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _spacing_pair(value, path: Path, what: str) -> tuple[float, float]:
    """One spacing (mm) for rows and columns, or ``[row, col]``; checked positive and finite."""
    if isinstance(value, str):  # "0.15" or "0.15,0.16" (a CSV cell)
        value = [v for v in value.strip("[]() ").split(",") if v.strip()]
    seq = isinstance(value, Sequence)
    try:
        vals = [float(v) for v in (list(value) if seq else [value])]
    except (TypeError, ValueError):
        raise DataError(
            f"{path}: {what} must be one positive number or [row, col] in mm, got {value!r}"
        ) from None
    vals = vals * 2 if len(vals) == 1 else vals
    if len(vals) != 2 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise DataError(f"{path}: {what} must be one positive number or [row, col] in mm, got {value!r}")
    return vals[0], vals[1]


def parse_orientation(value, path: Path | str, what: str = "orientation") -> tuple[str, str]:
    """``"L,F"`` / ``["L", "F"]`` / a DICOM ``PatientOrientation`` -> ``("L", "F")``, checked."""
    parts = [
        p.strip().upper() for p in (value.replace("\\", ",").split(",") if isinstance(value, str) else value)
    ]
    if (
        len(parts) != 2
        or not all(p in _OPPOSITE for p in parts)
        or parts[0] in (parts[1], _OPPOSITE[parts[1]])
    ):
        raise DataError(
            f"{path}: {what} {value!r} is not two orthogonal patient directions out of L R A P H F "
            "(along a row, down a column), e.g. L,F for an AP view displayed the radiological way; "
            "oblique views are not supported"
        )
    return parts[0], parts[1]


def _read_dicom(path: Path) -> Radiograph:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # InvalidDicomError, EOFError, OSError, ...
        raise DataError(
            f"{path} cannot be read as DICOM ({type(exc).__name__}: {exc}); export the radiograph again "
            "as a DICOM file (or PNG/TIFF with pixel_spacing_mm=)"
        ) from exc
    if "PixelData" not in ds:
        raise DataError(f"{path} is a DICOM file without pixel data (e.g. a report); pass the image file")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # missing decoder plugin, truncated pixel data
        raise DataError(
            f"{path}: the DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc}); "
            "decompress it first (e.g. `gdcmconv --raw in.dcm out.dcm`) or install a decoder for its "
            "transfer syntax"
        ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim != 2 or not photometric.startswith("MONOCHROME"):
        raise DataError(
            f"{path}: expected one grey-level image (MONOCHROME1/2), got shape {arr.shape} "
            f"({photometric}); pass a single-frame CR/DX radiograph"
        )
    values = apply_modality_lut(arr, ds)
    values = apply_voi_lut(values, ds) if ("VOILUTSequence" in ds or "WindowCenter" in ds) else values
    values = np.asarray(values, dtype=np.float64)
    if photometric == "MONOCHROME1":  # low values bright: invert so that bone is bright
        values = values.max() + values.min() - values
    spacing, source = None, ""
    for tag in ("ImagerPixelSpacing", "PixelSpacing"):
        if tag in ds and ds.data_element(tag).value:
            spacing, source = _spacing_pair(list(ds.data_element(tag).value), path, tag), tag
            break
    orientation = None
    po = ds.get("PatientOrientation")
    if po:
        try:
            orientation = parse_orientation(list(po), path, "PatientOrientation")
        except DataError:
            orientation = None  # oblique or free text: fall back to the option / default
    distances, distances_source = None, ""
    sdd = float(ds.get("DistanceSourceToDetector") or 0)
    emf = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
    sod = float(ds.get("DistanceSourceToPatient") or 0)
    if sdd > 0 and emf >= 1:  # the modality's estimate for the object of interest
        distances = (sdd / emf, sdd)
        distances_source = "DICOM DistanceSourceToDetector / EstimatedRadiographicMagnificationFactor"
    elif sdd > 0 and 0 < sod <= sdd:  # to the patient's entrance surface: the bone lies further away
        distances = (sod, sdd)
        distances_source = "DICOM DistanceSourceToPatient, DistanceSourceToDetector"
    return Radiograph(
        pixels=values,
        spacing_mm=spacing,
        path=path,
        orientation=orientation,
        study_uid=str(ds.StudyInstanceUID) if "StudyInstanceUID" in ds else None,
        patient_id=str(ds.PatientID) if "PatientID" in ds else None,
        spacing_source=source,
        distances_mm=distances,
        distances_source=distances_source,
    )


def _read_raster(path: Path) -> np.ndarray:
    try:
        if _suffix(path) == ".png":
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
        else:
            import tifffile

            arr = tifffile.imread(str(path))
    except Exception as exc:
        raise DataError(f"{path} cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # grey saved as RGB(A): every channel equal
        if not np.array_equal(arr[..., 0], arr[..., 1]) or not np.array_equal(arr[..., 0], arr[..., 2]):
            raise DataError(f"{path} is a colour image; pass the grey-level radiograph")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2D grey-level image, got shape {arr.shape}")
    return arr.astype(np.float64)


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).astype(np.float64)
    except Exception as exc:
        raise DataError(f"{path} cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    zooms = img.header.get_zooms()
    data = data.reshape(data.shape[:2]) if data.ndim >= 2 and np.prod(data.shape[2:]) == 1 else data
    if data.ndim != 2:
        raise DataError(f"{path}: expected a 2D image (x, y[, 1]), got shape {img.shape}")
    # NIfTI x runs along a row (columns), y down the image (rows), as ITK/SimpleITK write 2D images
    return data.T, _spacing_pair([zooms[1], zooms[0]], path, "the NIfTI voxel size")


def read_radiograph(path: str | Path, pixel_spacing_mm=None) -> Radiograph:
    """Read one radiograph (DICOM CR/DX, PNG, TIFF or 2D NIfTI) as displayed.

    Args:
        path: the file.
        pixel_spacing_mm: detector pixel spacing in mm (one number or ``[row, col]``); required for
            PNG/TIFF, and overrides the file's spacing for DICOM and NIfTI when given.

    Raises:
        DataError: a missing or unreadable file, or no pixel spacing; the message says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"radiograph {path} does not exist; check the path")
    suffix = _suffix(path)
    if suffix in _RASTER_SUFFIXES:
        rad = Radiograph(pixels=_read_raster(path), spacing_mm=None, path=path)
    elif suffix in _NIFTI_SUFFIXES:
        pixels, spacing = _read_nifti(path)
        rad = Radiograph(pixels=pixels, spacing_mm=spacing, path=path, spacing_source="NIfTI header")
    elif suffix in _DICOM_SUFFIXES or suffix == "":
        rad = _read_dicom(path)
    else:
        raise DataError(
            f"{path}: unknown image type {suffix!r}; pass DICOM (.dcm), PNG, TIFF or NIfTI (.nii/.nii.gz)"
        )
    if pixel_spacing_mm is not None:
        rad.spacing_mm = _spacing_pair(pixel_spacing_mm, path, "pixel_spacing_mm")
        rad.spacing_source = "pixel_spacing_mm option"
    if rad.spacing_mm is None:
        raise DataError(
            f"{path} carries no pixel spacing (no ImagerPixelSpacing/PixelSpacing, or a PNG/TIFF): pass "
            "the detector pixel size, e.g. pixel_spacing_mm=0.143 (or a pairs CSV column pixel_spacing_mm)"
        )
    if not np.isfinite(rad.pixels).all() or rad.pixels.max() <= rad.pixels.min():
        raise DataError(f"{path}: the image is constant or holds NaN/inf values; pass the radiograph itself")
    return rad


def check_same_study(ap: Radiograph, lat: Radiograph) -> None:
    """Refuse an AP/LAT pair of two different patients or studies (when both files say which).

    Raises:
        DataError: naming both files and the differing identifier.
    """
    for attr, tag in (("patient_id", "PatientID"), ("study_uid", "StudyInstanceUID")):
        a, b = getattr(ap, attr), getattr(lat, attr)
        if a and b and a != b:
            raise DataError(
                f"ap={ap.path} and lat={lat.path} belong to different studies ({tag} {a!r} vs {b!r}); "
                "pass two views of the same study (or allow_different_studies=true when you know they match)"
            )


def detector_offsets_mm(n_out: int, fov_px: int, pixel_spacing_iso_mm: float) -> np.ndarray:
    """Offsets from the view centre (mm, at the isocentre) of the ``n_out`` model pixels along one axis.

    The training DRR renders ``fov_px`` detector pixels of ``pixel_spacing_iso_mm`` and resizes them to
    ``n_out`` with an align_corners bilinear resize (or casts the rays through those points), so model
    pixel ``i`` sits at detector position ``i (fov_px - 1) / (n_out - 1)``.
    """
    if n_out < 2:
        raise ValueError(f"model input size must be >= 2, got {n_out}")
    pos = np.arange(n_out, dtype=np.float64) * (fov_px - 1) / (n_out - 1)
    return (pos - (fov_px - 1) / 2.0) * pixel_spacing_iso_mm


def _axis_map(orientation: tuple[str, str], view: str, path: Path) -> list[tuple[int, float]]:
    """For each model axis of ``view``: (image axis, sign) that points the same way."""
    # image axis 0 (rows) points to orientation[1] (down a column), axis 1 (columns) to orientation[0]
    image_dirs = {0: orientation[1], 1: orientation[0]}
    out = []
    for target in MODEL_AXES[view]:
        hit = [(k, 1.0) for k, d in image_dirs.items() if d == target]
        hit += [(k, -1.0) for k, d in image_dirs.items() if _OPPOSITE[d] == target]
        if not hit:
            raise DataError(
                f"{path}: the {view.upper()} view needs a {target}/{_OPPOSITE[target]} axis, but its "
                f"orientation is {','.join(orientation)}; check that ap= and lat= are not swapped, or set "
                f"{view}_orientation= (along a row, down a column)"
            )
        out.append(hit[0])
    return out


def crop_to_model(
    rad: Radiograph,
    view: str,
    geometry: ViewGeometry,
    n_out: int,
    fov_px: int,
    pixel_spacing_iso_mm: float,
    antialias: bool = True,
) -> np.ndarray:
    """Sample the model's field of view out of a radiograph, in the model layout of ``view``.

    Args:
        rad: the radiograph (as displayed).
        view: ``"ap"`` or ``"lat"``.
        geometry: centre, distances and orientation of the view.
        n_out: model input size (pixels per side).
        fov_px: training detector pixels per side (``BiplanarProjector.detector_size``).
        pixel_spacing_iso_mm: training detector pixel size at the isocentre.
        antialias: Gaussian pre-filter when the radiograph's pixels are finer than the model's (a model
            pixel then averages the detector area it stands for, as a DRR ray through a voxel grid does).

    Returns:
        ``(n_out, n_out)`` float32 intensities (not normalised).

    Raises:
        DataError: the field of view does not fit inside the image.
    """
    if view not in MODEL_AXES:
        raise ValueError(f"view must be 'ap' or 'lat', got {view!r}")
    orientation = geometry.orientation or rad.orientation or DEFAULT_ORIENTATION[view]
    axes = _axis_map(orientation, view, rad.path)
    rows, cols = rad.pixels.shape
    center = geometry.center_px if geometry.center_px is not None else ((rows - 1) / 2.0, (cols - 1) / 2.0)
    offsets_det_mm = detector_offsets_mm(n_out, fov_px, pixel_spacing_iso_mm) * geometry.magnification
    coords = np.zeros((2, n_out, n_out))
    for model_axis, (img_axis, sign) in enumerate(axes):
        step = offsets_det_mm * sign / rad.spacing_mm[img_axis]
        coords[img_axis] = center[img_axis] + (step[:, None] if model_axis == 0 else step[None, :])
    size = np.array([rows, cols], dtype=float)
    lo, hi = coords.reshape(2, -1).min(axis=1), coords.reshape(2, -1).max(axis=1)
    tol = 1e-6
    if (lo < -tol).any() or (hi > size - 1 + tol).any():
        need_mm = (fov_px - 1) * pixel_spacing_iso_mm * geometry.magnification
        have_mm = (size - 1) * np.asarray(rad.spacing_mm)
        raise DataError(
            f"{rad.path}: the model's field of view ({need_mm:.1f} mm square at the detector around pixel "
            f"(row, col) = ({center[0]:.1f}, {center[1]:.1f})) does not fit in the image "
            f"({have_mm[0]:.1f} x {have_mm[1]:.1f} mm). Move the bone centre ({view}_center_px=[row,col]) "
            "away from the edge, or check the pixel spacing and the source distances"
        )
    image = rad.pixels
    if antialias:
        # a model pixel spans r image pixels: blur by the Gaussian that brings the image's own pixel blur
        # (sigma ~ 0.5 px) up to half a model pixel, sigma = 0.5 sqrt(r^2 - 1) image pixels (none at r <= 1)
        step_mm = (fov_px - 1) * pixel_spacing_iso_mm * geometry.magnification / (n_out - 1)
        sigma = [0.5 * math.sqrt(max((step_mm / s) ** 2 - 1.0, 0.0)) for s in rad.spacing_mm]
        if max(sigma) >= 0.1:
            pad = [int(math.ceil(4 * s)) + 1 for s in sigma]
            r0, c0 = (max(0, int(math.floor(lo[k])) - pad[k]) for k in range(2))
            r1, c1 = (min(int(size[k]), int(math.ceil(hi[k])) + pad[k] + 1) for k in range(2))
            image = ndimage.gaussian_filter(rad.pixels[r0:r1, c0:c1], sigma=sigma, mode="nearest")
            coords = coords - np.array([r0, c0], dtype=float)[:, None, None]
    out = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
    return out.astype(np.float32)


def model_to_display(img: np.ndarray, view: str, orientation: tuple[str, str] | None = None) -> np.ndarray:
    """The inverse layout change: a model-layout view as a displayed radiograph of ``orientation``.

    Used to write rendered DRRs as radiograph files (``ct=`` demos, tests).
    """
    orientation = orientation or DEFAULT_ORIENTATION[view]
    axes = _axis_map(orientation, view, Path(f"<{view}>"))
    out = np.asarray(img)
    if axes[0][0] == 1:  # model rows are image columns
        out = out.T
        axes = [axes[1], axes[0]]
    for img_axis, sign in axes:
        if sign < 0:
            out = np.flip(out, axis=img_axis)
    return np.ascontiguousarray(out)
