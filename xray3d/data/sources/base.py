"""The preparer skeleton every public dataset source is built on.

A source (:class:`Preparer` subclass) says how to find its raw files, how to load one subject's CT and
labels, and which samples (mask + ROI centre + metadata) a subject gives. The skeleton does the rest, the
same way for every source:

1. **discover**: :meth:`Preparer.find_files` lists ``(subject, kind, location, path)`` hits;
   :func:`resolve_files` applies the ambiguity rule (below);
2. **resume**: :func:`load_previous` reads the previous run's ``manifest.json`` (same settings digest):
   subjects whose samples are all on disk and that did not fail are not redone;
3. **per subject** (in worker processes, with a rich progress bar): :meth:`Preparer.load` reads the CT
   and labels, the CT's content hash is taken (:func:`scan_digest`, no second read), then every
   :class:`Candidate` of :meth:`Preparer.samples` goes through the ROI step (optional native crop, largest
   component, :func:`xray3d.data.roi.extract_roi`, optional mirror) and is written atomically;
4. **write**: duplicate scans are grouped, the subject-level split keeps each group in one split, and
   ``report.csv``, ``manifest.csv`` and ``manifest.json`` are written atomically (the JSON last).

Shared rules:

* **Failures** (missing, corrupt or mismatched files: :class:`DataError`, or any other exception) mark the
  subject ``failed`` (``manifest.json`` ``complete: false``) and are retried by the next run;
  **rejections** (:class:`Rejected`, a selection rule) and :class:`Skip` entries are final for the
  settings. One bad subject never stops the others.
* **Ambiguous subjects**: a subject's files are grouped by *location* (the folder that holds one copy of
  the subject; a source can merge folders that belong together, e.g. BIDS ``rawdata/`` + ``derivatives/``).
  One location: its files are used, unless it holds two files of one kind (then the subject is refused).
  Several locations: when exactly one of them holds a complete, unambiguous set, that set is used and every
  other file is listed as ignored in ``report.csv``; otherwise the subject is refused (``failed``) with
  every path named. Files are never mixed across locations.
* **Duplicate scans**: subjects whose CTs have the same voxels (bytes, dtype, shape) and affine are
  reported (``report.csv`` note, ``manifest.json`` ``duplicate_scans``) and land in one split. With
  imported split lists a duplicate group spread over two splits is a leak: an ``error`` row in
  ``report.csv`` and an entry in ``manifest.json`` ``errors``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
import pandas as pd

from xray3d.data.io import DataError, load_nifti, save_nifti_atomic, write_csv_atomic, write_json_atomic
from xray3d.data.roi import (
    PRESETS,
    AnatomyPreset,
    crop_around,
    extract_roi,
    label_centroid_mm,
    largest_component,
)
from xray3d.data.sources.cli import prepare_main
from xray3d.data.sources.splits import load_split_lists, reference_split

__all__ = [
    "GEOMETRY_ATOL_MM",
    "REPORT_COLUMNS",
    "Candidate",
    "FileHit",
    "Preparer",
    "PreviousRun",
    "Rejected",
    "Skip",
    "SubjectFiles",
    "check_geometry",
    "digest",
    "integral_labels",
    "manifest_columns",
    "label_component",
    "load_ct",
    "load_labels",
    "load_previous",
    "resolve_files",
    "run_subjects",
    "sample_ok",
    "scan_digest",
    "skip_entry",
]

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["subject", "sample_id", "status", "reason", "note"]
ROW_COLUMNS = ["split", "source", "spacing_mm", "shape", "voxels", "ct_path", "mask_path"]
GEOMETRY_ATOL_MM = 1e-2  # the reference relaxes SimpleITK's tolerance to 0.01 as well
AFFINE_DIGEST_DECIMALS = 4  # affines equal to 1e-4 mm count as equal in the duplicate-scan hash


# ----------------------------------------------------------------------------------------------------------
# small shared helpers


def digest(settings: dict) -> str:
    """Short SHA-1 of a JSON-serialisable settings dict."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def manifest_columns(*specific: str) -> list[str]:
    """``manifest.csv`` columns: the identifiers, a source's own metadata, then the columns every row has."""
    return ["sample_id", "subject", "anatomy", *specific, *ROW_COLUMNS]


def file_digest(path: Path | None) -> str | None:
    """Short SHA-1 of a file's bytes (None for no file)."""
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path is not None else None


def sample_ok(row: dict, out_dir: Path) -> bool:
    """Both files of a manifest row exist under ``out_dir``."""
    return (out_dir / row["ct_path"]).is_file() and (out_dir / row["mask_path"]).is_file()


def skip_entry(subject: str, sample_id: str, reason: str, failed: bool = False) -> dict[str, Any]:
    """A skipped sample; ``failed`` ones (data errors) are retried by the next run, rule rejections not."""
    return {"subject": subject, "sample_id": sample_id, "reason": reason, "failed": failed}


def scan_digest(img: nib.Nifti1Image) -> str:
    """Content hash of a CT: voxel bytes, dtype, shape and affine (rounded to 1e-4 mm).

    Two subjects with the same digest are the same scan under two names (a duplicate).
    """
    # Fortran order, as NIfTI stores voxels and nibabel loads them: no copy for a loaded scan
    data = np.asfortranarray(np.asanyarray(img.dataobj))
    h = hashlib.sha1(f"{data.dtype.str}|{data.shape}|".encode())
    affine = np.round(np.asarray(img.affine, dtype=np.float64), AFFINE_DIGEST_DECIMALS) + 0.0  # -0.0 -> 0.0
    h.update(affine.tobytes())
    h.update(data.T.data)  # the transpose of a Fortran-ordered array is C-contiguous
    return h.hexdigest()


def _affine_entry_name(i: int, j: int) -> str:
    return f"origin {'xyz'[i]}" if j == 3 else f"[{i},{j}]"


def check_geometry(ct: nib.Nifti1Image, seg: nib.Nifti1Image, path: Path) -> None:
    """Raise :class:`DataError` unless the segmentation shares the CT's grid.

    The message says whether the shapes differ, or only the affines, and then by how much (largest
    absolute difference in mm) and in which entries (``origin x/y/z`` or ``[row,col]`` of the 3x3 part).
    """
    if seg.shape != ct.shape:
        raise DataError(
            f"CT/segmentation geometry mismatch: {path.name} has shape {tuple(seg.shape)}, the CT "
            f"{tuple(ct.shape)} (different grids: the segmentation does not belong to this CT)"
        )
    diff = np.abs(np.asarray(seg.affine, dtype=float) - np.asarray(ct.affine, dtype=float))[:3]
    if (diff > GEOMETRY_ATOL_MM).any():
        bad = [(int(i), int(j)) for i, j in np.argwhere(diff > GEOMETRY_ATOL_MM)]
        names = ", ".join(f"{_affine_entry_name(i, j)} by {diff[i, j]:.3g} mm" for i, j in bad)
        raise DataError(
            f"CT/segmentation geometry mismatch: {path.name} has the CT's shape {tuple(ct.shape)} but its "
            f"affine differs by up to {diff.max():.3g} mm (tolerance {GEOMETRY_ATOL_MM} mm): {names}"
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


def label_component(
    labels: np.ndarray, label: int, box: tuple[slice, ...], affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Largest 26-connected component of one label (searched inside its bounding box) and its centroid.

    Args:
        labels: label array.
        label: the label.
        box: the label's bounding box (``scipy.ndimage.find_objects``).
        affine: the array's affine.

    Returns:
        ``(mask, centre_mm)``: the component as a full-size boolean array, its world (RAS, mm) centroid.
    """
    sub = largest_component(labels[box] == label)
    lo = np.array([s.start for s in box])
    aff = np.asarray(affine, dtype=float).copy()
    aff[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
    mask = np.zeros(labels.shape, dtype=bool)
    mask[box] = sub
    return mask, label_centroid_mm(sub, aff)


def load_ct(path: Path) -> nib.Nifti1Image:
    """Read a raw CT and check that it is a finite 3D volume."""
    ct = load_nifti(path, "CT", raw=True)
    if len(ct.shape) != 3:
        raise DataError(f"CT {path.name} is not a 3D volume (shape {ct.shape})")
    data = np.asanyarray(ct.dataobj)
    if data.dtype.kind in "fc" and not np.isfinite(data).all():  # integer voxels are always finite
        raise DataError(f"CT {path.name} contains NaN/inf voxels")
    return ct


def load_labels(ct: nib.Nifti1Image, path: Path, what: str = "segmentation") -> tuple[np.ndarray, np.ndarray]:
    """Read a raw label map that must share the CT's grid (:func:`check_geometry`).

    Returns:
        ``(labels, affine)``: int32 labels (:func:`integral_labels`) and the label map's own affine.
    """
    seg = load_nifti(path, what, raw=True)
    check_geometry(ct, seg, path)
    return integral_labels(seg, path), seg.affine


# ----------------------------------------------------------------------------------------------------------
# discovery: the ambiguity rule


@dataclass(frozen=True)
class FileHit:
    """One raw file found by a source: whose it is, what it is and which copy of the subject holds it."""

    subject: str
    kind: str
    location: str
    path: Path


@dataclass(frozen=True)
class SubjectFiles:
    """A subject's files after the ambiguity rule.

    Attributes:
        files: kind -> path (None when missing).
        ignored: files of the subject in other locations, not used.
        refused: non-empty when the subject is ambiguous: the reason, naming every path.
    """

    files: dict[str, Path | None]
    ignored: tuple[Path, ...] = ()
    refused: str = ""


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def resolve_files(
    hits: Iterable[FileHit], kinds: Sequence[str], root: Path, subjects: Iterable[str] = ()
) -> dict[str, SubjectFiles]:
    """Apply the ambiguity rule (module docstring) to every subject's files.

    Args:
        hits: every raw file found, with its subject, kind and location.
        kinds: the file kinds a complete subject has.
        root: raw folder (paths in messages are relative to it).
        subjects: subjects that exist even without any file (e.g. an empty subject folder).

    Returns:
        subject -> :class:`SubjectFiles`, sorted by subject.
    """
    by_subject: dict[str, dict[str, dict[str, list[Path]]]] = {}
    for subject in subjects:
        by_subject.setdefault(subject, {"": {k: [] for k in kinds}})
    for hit in hits:
        loc = by_subject.setdefault(hit.subject, {}).setdefault(hit.location, {k: [] for k in kinds})
        loc[hit.kind].append(hit.path)
    out: dict[str, SubjectFiles] = {}
    for subject, locations in sorted(by_subject.items()):

        def clean(files: dict[str, list[Path]]) -> bool:
            return all(len(v) <= 1 for v in files.values())

        every = sorted(p for files in locations.values() for paths in files.values() for p in paths)
        if len(locations) == 1:
            (files,) = locations.values()
            if clean(files):
                out[subject] = SubjectFiles({k: (v[0] if v else None) for k, v in files.items()})
                continue
            several = "; ".join(
                f"{k}: {', '.join(_rel(p, root) for p in sorted(v))}" for k, v in files.items() if len(v) > 1
            )
            reason = f"ambiguous subject: several files of one kind ({several}); keep one and run again"
            out[subject] = SubjectFiles(dict.fromkeys(kinds), refused=reason)
            continue
        complete = [
            loc
            for loc, files in locations.items()
            if clean(files) and all(len(v) == 1 for v in files.values())
        ]
        if len(complete) == 1:
            files = locations[complete[0]]
            used = {v[0] for v in files.values()}
            out[subject] = SubjectFiles(
                {k: v[0] for k, v in files.items()}, ignored=tuple(p for p in every if p not in used)
            )
            continue
        why = "two complete copies" if complete else "no folder holds a complete set"
        reason = (
            f"ambiguous subject: files found in {len(locations)} folders and {why} "
            f"({', '.join(_rel(p, root) for p in every)}); keep one copy of the subject and run again"
        )
        out[subject] = SubjectFiles(dict.fromkeys(kinds), refused=reason)
    return out


def visible_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (sorted), skipping hidden files and folders."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield path


# ----------------------------------------------------------------------------------------------------------
# resume


@dataclass
class PreviousRun:
    """What a previous run with the same settings left behind.

    Attributes:
        rows: per subject, its manifest rows whose files still exist.
        skipped: per subject, its skipped entries.
        scans: per subject, the CT content hash (:func:`scan_digest`).
        settled: subjects that need no work.
        up_to_date: every subject settled and the split settings unchanged: nothing to do.
    """

    rows: dict[str, list[dict]] = field(default_factory=dict)
    skipped: dict[str, list[dict]] = field(default_factory=dict)
    scans: dict[str, str] = field(default_factory=dict)
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
        prev.scans = dict(meta.get("scans", {}))
        for subj in meta["subjects"]:
            n_rows = sum(1 for r in meta["samples"] if r["subject"] == subj)
            ok = len(prev.rows.get(subj, [])) == n_rows and subj in prev.scans  # no hash: redo (older run)
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


# ----------------------------------------------------------------------------------------------------------
# running subjects


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_subjects(
    jobs: Sequence[dict], process: Callable[[dict], dict], workers: int, desc: str, progress: bool = True
) -> tuple[dict[str, dict], float]:
    """Run ``process`` on every job (in ``workers`` processes when > 1); results by subject, seconds."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    columns = (
        TextColumn(desc),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("subjects"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress or not jobs) as bar:
        task = bar.add_task(desc, total=len(jobs))
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                results[job["subject"]] = process(job)
                bar.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_init_worker) as pool:
                for fut in as_completed([pool.submit(process, job) for job in jobs]):
                    res = fut.result()
                    results[res["subject"]] = res
                    bar.advance(task)
    return results, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------
# the skeleton


class Rejected(Exception):
    """A subject fails a selection rule: final for these settings, not a failure."""


@dataclass
class Skip:
    """A sample left out for good (a rule, not a data error), with its reason."""

    sample_id: str
    reason: str


@dataclass
class Candidate:
    """One sample of a subject, before the ROI step.

    Attributes:
        sample_id: unique sample id.
        mask: binary target on the CT's grid.
        centre_mm: ROI centre, world RAS mm.
        meta: manifest columns of this sample beyond the common ones (level, side, ...).
        crop: read only the native sub-volume around the ROI (:func:`xray3d.data.roi.crop_around`) first.
        largest: keep the largest connected component of the (cropped) mask.
        mirror: flip the R axis (axis 2) of the PIR ROI arrays, keeping the affine.
        note: what the report should say about this sample (e.g. how its centre was found).
    """

    sample_id: str
    mask: np.ndarray
    centre_mm: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    crop: bool = False
    largest: bool = False
    mirror: bool = False
    note: str = ""


@dataclass
class Scan:
    """What :meth:`Preparer.load` read for one subject: the CT plus anything the source needs."""

    ct: nib.Nifti1Image
    data: dict[str, Any] = field(default_factory=dict)


class Preparer(ABC):
    """Skeleton of a per-subject dataset preparation (see the module docstring).

    Subclasses set the class attributes and implement :meth:`find_files`, :meth:`load` and
    :meth:`samples`; they may override :meth:`settings`, :meth:`split_extra`, :meth:`annotate`,
    :meth:`assignment`, :meth:`job_extra`, :meth:`source_of`, :meth:`failure_id` and :meth:`expected_ids`.

    Attributes:
        name: dataset name for logs and the progress bar.
        anatomy: key of :data:`xray3d.data.roi.PRESETS`; also the output folder and the ``anatomy`` column.
        kinds: file kinds of a complete subject.
        manifest_columns: columns of ``manifest.csv``.
        version: preparation version (part of the settings digest).
        no_files_hint: the error when the raw folder holds no file of the dataset.
        raw_help: what the command's ``--raw`` must point at.
        out_example: an example ``--out`` folder.
        cli_options: the command's own options: flag -> ``argparse`` keywords, whose ``dest`` is the
            constructor keyword the value goes to.
    """

    name: str
    anatomy: str
    kinds: ClassVar[tuple[str, ...]]
    manifest_columns: ClassVar[list[str]]
    version: ClassVar[int] = 1
    no_files_hint: ClassVar[str] = ""
    raw_help: ClassVar[str] = "raw dataset folder"
    out_example: ClassVar[str] = "data/<dataset>"
    cli_options: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(
        self,
        raw_dir: str | Path,
        out_dir: str | Path,
        *,
        workers: int = 1,
        force: bool = False,
        split_seed: int = 12345,
        split_lists: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        """Options every source has.

        Args:
            raw_dir: the dataset as downloaded (see the source's module docstring).
            out_dir: output cache directory.
            workers: worker processes (1 = in this process).
            force: redo every sample.
            split_seed: random state of the subject-level split (spec §2.5).
            split_lists: reference split lists to import instead (see :func:`load_split_lists`); subjects
                not listed get split ``"unlisted"``.
            progress: show a progress bar.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.raw_dir, self.out_dir = Path(raw_dir), Path(out_dir)
        self.workers, self.force, self.progress = workers, force, progress
        self.split_seed = split_seed
        self.split_lists = split_lists

    @classmethod
    def run(cls, raw_dir: str | Path, out_dir: str | Path, *args: Any, **options: Any) -> Path:
        """Prepare the dataset: ``cls(raw_dir, out_dir, *args, **options).prepare()`` (the sources'
        ``prepare_*`` functions; the options are those of the source's constructor and of :class:`Preparer`).

        Returns:
            Path of ``manifest.csv`` (possibly with no rows; reasons in ``manifest.json`` / ``report.csv``).
        """
        return cls(raw_dir, out_dir, *args, **options).prepare()

    @classmethod
    def main(cls, argv: list[str] | None = None) -> int:
        """The source's command (``xray3d-prepare-<source>``); returns the exit code."""
        return prepare_main(argv, cls)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the source's own command-line options (:attr:`cli_options`)."""
        for flag, kwargs in cls.cli_options.items():
            parser.add_argument(flag, **kwargs)

    @classmethod
    def options_from(cls, args: argparse.Namespace) -> dict[str, Any]:
        """Constructor keywords from the source's own parsed options."""
        return {kw["dest"]: getattr(args, kw["dest"]) for kw in cls.cli_options.values()}

    @property
    def preset(self) -> AnatomyPreset:
        """ROI cube and training grid of this anatomy."""
        return PRESETS[self.anatomy]

    # ---- hooks --------------------------------------------------------------------------------------

    @abstractmethod
    def find_files(self) -> Iterable[FileHit]:
        """Every raw file of the dataset under ``raw_dir``, with subject, kind and location."""

    @abstractmethod
    def load(self, job: dict[str, Any]) -> Scan:
        """Read one subject's CT and labels (in a worker; raise :class:`DataError` on bad data)."""

    @abstractmethod
    def samples(self, job: dict[str, Any], scan: Scan) -> Iterable[Candidate | Skip]:
        """The subject's samples (raise :class:`Rejected` to reject the whole subject)."""

    def known_subjects(self) -> Iterable[str]:
        """Subjects that exist even when none of their files is found (default: none)."""
        return ()

    def settings(self) -> dict[str, Any]:
        """Settings that change the samples (their digest decides what a re-run redoes)."""
        return {
            "version": self.version,
            "task": self.name,
            "roi": [self.preset.roi_mm, self.preset.grid_size],
        }

    def split_extra(self) -> dict[str, Any]:
        """Extra split settings (inputs of :meth:`annotate` or the split, e.g. a table's digest)."""
        return {}

    def assignment(self, subjects: Sequence[str]) -> dict[str, str] | None:
        """Imported split (subject -> split), or None for the reference protocol."""
        return load_split_lists(self.split_lists) if self.split_lists else None

    def annotate(self, row: dict[str, Any]) -> None:
        """Fill in per-row metadata known only in the main process (run after the split is set)."""
        return None

    def job_extra(self, subject: str, files: dict[str, Path | None]) -> dict[str, Any]:
        """Extra (picklable) fields of a subject's job."""
        return {}

    def source_of(self, subject: str, files: dict[str, Path | None]) -> str:
        """The ``source`` column: the CT's path relative to the raw folder."""
        ct = files.get("ct")
        return _rel(ct, self.raw_dir) if ct is not None else ""

    def failure_id(self, subject: str) -> str:
        """Sample id under which a failed subject is reported."""
        return subject

    def expected_ids(self, subject: str) -> list[str]:
        """Sample ids under which a rejected subject is reported."""
        return [self.failure_id(subject)]

    def meta_extra(self) -> dict[str, Any]:
        """Extra ``manifest.json`` fields."""
        return {}

    # ---- per subject (worker) -------------------------------------------------------------------------

    def process(self, job: dict[str, Any]) -> dict[str, Any]:
        """Prepare every sample of one subject; never raises (errors become failed entries)."""
        subject = job["subject"]
        res: dict[str, Any] = {"subject": subject, "rows": [], "skipped": [], "scan": None}
        # the CT's content hash is taken in a thread (hashlib releases the GIL) while the samples are made
        with ThreadPoolExecutor(max_workers=1) as hasher:
            pending = None
            try:
                if job["refused"]:
                    raise DataError(job["refused"])
                scan = self.load(job)
                pending = hasher.submit(scan_digest, scan.ct)
                res["rows"], res["skipped"] = self._samples(job, scan)
            except Rejected as exc:
                res["rows"] = []
                res["skipped"] = [skip_entry(subject, s, str(exc)) for s in self.expected_ids(subject)]
            except Exception as exc:  # one bad subject must not stop the others
                reason = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
                res["rows"] = []
                res["skipped"] = [skip_entry(subject, self.failure_id(subject), reason, True)]
            if pending is not None:
                res["scan"] = pending.result()
        return res

    def _samples(self, job: dict[str, Any], scan: Scan) -> tuple[list[dict], list[dict]]:
        subject, done = job["subject"], job["done"]
        rows: list[dict] = []
        skipped: list[dict] = []
        for cand in self.samples(job, scan):
            if cand.sample_id in done:
                rows.append(done[cand.sample_id])
                continue
            if isinstance(cand, Skip):
                skipped.append(skip_entry(subject, cand.sample_id, cand.reason))
                continue
            row = self._write_sample(job, scan, cand)
            if isinstance(row, str):
                skipped.append(skip_entry(subject, cand.sample_id, row))
            else:
                rows.append(row)
        return rows, skipped

    def _write_sample(self, job: dict[str, Any], scan: Scan, cand: Candidate) -> dict[str, Any] | str:
        """ROI step and atomic write of one sample: its manifest row, or the reason it is skipped."""
        preset = self.preset
        ct, mask = scan.ct, cand.mask
        if cand.crop:
            ct, mask = crop_around(scan.ct, cand.mask, cand.centre_mm, preset.grid_size, preset.spacing_mm)
            if ct is None or mask is None:
                return "the ROI cube misses the scan"
            if not mask.any():
                return "empty mask after ROI extraction"
        if cand.largest:
            mask = largest_component(mask)
        ct_roi, msk_roi = extract_roi(ct, mask, cand.centre_mm, preset.grid_size, preset.spacing_mm)
        if cand.mirror:  # flip the R axis of the PIR arrays, keep the affine (reference's mirror_image)
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
            return "empty mask after ROI extraction"
        rel_ct = f"{self.anatomy}/{cand.sample_id}_ct.nii.gz"
        rel_msk = f"{self.anatomy}/{cand.sample_id}_msk.nii.gz"
        out_dir = Path(job["out_dir"])
        save_nifti_atomic(ct_roi, out_dir / rel_ct)
        save_nifti_atomic(msk_roi, out_dir / rel_msk)
        row = {
            "sample_id": cand.sample_id,
            "subject": job["subject"],
            "anatomy": self.anatomy,
            "split": "",
            "source": job["source"],
            "spacing_mm": preset.spacing_mm,
            "shape": "x".join([str(preset.grid_size)] * 3),
            "voxels": voxels,
            "ct_path": rel_ct,
            "mask_path": rel_msk,
            **cand.meta,
        }
        if cand.note:
            row["note"] = cand.note
        return row

    # ---- driver (main process) ------------------------------------------------------------------------

    def discover(self) -> dict[str, SubjectFiles]:
        """Subject -> files after the ambiguity rule; :class:`DataError` when the dataset is not there."""
        if not self.raw_dir.is_dir():
            raise DataError(f"raw {self.name} folder not found: {self.raw_dir}; {self.no_files_hint}")
        subjects = resolve_files(self.find_files(), self.kinds, self.raw_dir, self.known_subjects())
        if not subjects:
            raise DataError(f"no {self.name} file under {self.raw_dir}: {self.no_files_hint}")
        return subjects

    def prepare(self) -> Path:
        """Run the preparation (idempotent, resumable, atomic, parallel over subjects).

        Returns:
            Path of ``manifest.csv`` (possibly with no rows; reasons in ``manifest.json`` / ``report.csv``).
        """
        settings = self.settings()
        settings_digest = digest(settings)
        subjects = self.discover()
        assignment = self.assignment(list(subjects))
        split_settings = {
            "seed": self.split_seed,
            "test": 0.15,
            "val": 0.15,
            **self.split_extra(),
            "lists": assignment,
        }
        manifest_csv = self.out_dir / "manifest.csv"
        previous = load_previous(self.out_dir, settings_digest, subjects, split_settings, self.force)
        refused = {s for s, f in subjects.items() if f.refused}
        previous.settled -= refused
        if previous.up_to_date and not refused:
            log.info("%s already prepared in %s", self.name, self.out_dir)
            return manifest_csv
        jobs = [
            {
                "subject": subject,
                "files": {k: (str(v) if v else None) for k, v in found.files.items()},
                "refused": found.refused,
                "source": self.source_of(subject, found.files),
                "out_dir": str(self.out_dir),
                "done": {r["sample_id"]: r for r in previous.rows.get(subject, [])},
                **self.job_extra(subject, found.files),
            }
            for subject, found in subjects.items()
            if subject not in previous.settled
        ]
        results, elapsed = run_subjects(jobs, self.process, self.workers, self.name, self.progress)
        meta = {
            "digest": settings_digest,
            "settings": settings,
            "split": split_settings,
            "raw_dir": str(self.raw_dir),
            **self.meta_extra(),
            "subjects": sorted(subjects),
        }
        self._write(subjects, results, previous, meta, assignment, elapsed)
        return manifest_csv

    def _write(
        self,
        subjects: dict[str, SubjectFiles],
        results: dict[str, dict],
        previous: PreviousRun,
        meta: dict,
        assignment: dict[str, str] | None,
        elapsed_s: float,
    ) -> list[dict]:
        """Merge results with the settled subjects, group duplicates, split and write the outputs."""
        merged = {
            s: {
                "subject": s,
                "rows": previous.rows.get(s, []),
                "skipped": previous.skipped.get(s, []),
                "scan": previous.scans.get(s),
            }
            for s in previous.settled
            if s in subjects
        }
        merged.update(results)
        rows = [r for s in sorted(merged) for r in merged[s]["rows"]]
        skipped = [k for s in sorted(merged) for k in merged[s]["skipped"]]
        reused = {r["sample_id"] for rs in previous.rows.values() for r in rs}
        new = sum(1 for r in rows if r["sample_id"] not in reused)
        rate = new / (elapsed_s / 60.0) if elapsed_s > 0 and new else 0.0

        scans = {s: m["scan"] for s, m in sorted(merged.items()) if m.get("scan")}
        groups = duplicate_groups(scans)
        kept = sorted({r["subject"] for r in rows})
        group_of = {s: g[0] for g in groups for s in g if s in kept}
        if assignment is not None:
            split_of = {s: assignment.get(s, "unlisted") for s in kept}
        else:
            split_of = reference_split(kept, seed=self.split_seed, groups=group_of)
        for r in rows:
            r["split"] = split_of[r["subject"]]
            self.annotate(r)
        errors = split_leaks(groups, split_of)

        notes = {s: [] for s in merged}
        for s, found in subjects.items():
            if found.ignored and s in notes:
                notes[s].append(
                    "ignored other copies: " + ", ".join(_rel(p, self.raw_dir) for p in found.ignored)
                )
        for g in groups:
            for s in g:
                others = ", ".join(o for o in g if o != s)
                notes[s].append(f"duplicate scan: same CT voxels and affine as {others} (kept in one split)")

        def note(entry: dict) -> str:
            return "; ".join(
                [*([entry["note"]] if entry.get("note") else []), *notes.get(entry["subject"], [])]
            )

        report = [
            {
                "subject": r["subject"],
                "sample_id": r["sample_id"],
                "status": "prepared",
                "reason": "",
                "note": note(r),
            }
            for r in rows
        ]
        report += [
            {
                "subject": s["subject"],
                "sample_id": s["sample_id"],
                "status": "failed" if s.get("failed") else "skipped",
                "reason": s["reason"],
                "note": note(s),
            }
            for s in skipped
        ]
        report += [
            {
                "subject": e["subjects"][0],
                "sample_id": "",
                "status": "error",
                "reason": e["reason"],
                "note": "",
            }
            for e in errors
        ]
        write_csv_atomic(pd.DataFrame(report, columns=REPORT_COLUMNS), self.out_dir / "report.csv")
        write_csv_atomic(
            pd.DataFrame(rows, columns=list(self.manifest_columns)), self.out_dir / "manifest.csv"
        )
        write_json_atomic(
            {
                **meta,
                "complete": not any(s.get("failed") for s in skipped),
                "orientation": "PIR",
                "units": "HU",
                "samples": rows,
                "skipped": skipped,
                "scans": scans,
                "duplicate_scans": groups,
                "errors": errors,
                "timing": {
                    "workers": self.workers,
                    "seconds": round(elapsed_s, 3),
                    "new_samples": new,
                    "samples_per_min": round(rate, 2),
                },
            },
            self.out_dir / "manifest.json",
        )
        for s in skipped:
            log.info("%s %s: %s", "failed" if s.get("failed") else "skipped", s["sample_id"], s["reason"])
        for g in groups:
            log.warning("duplicate scan (same CT voxels and affine): %s; kept in one split", ", ".join(g))
        for e in errors:
            log.error("%s", e["reason"])
        log.info(
            "%d new samples in %.1f s (%.1f samples/min, %d workers)", new, elapsed_s, rate, self.workers
        )
        if not rows:
            log.warning(
                "no sample could be prepared from %s; see %s", self.raw_dir, self.out_dir / "report.csv"
            )
        return rows


def duplicate_groups(scans: dict[str, str]) -> list[list[str]]:
    """Groups (sorted, of two or more subjects) that share one CT content hash."""
    by_hash: dict[str, list[str]] = {}
    for subject, h in sorted(scans.items()):
        by_hash.setdefault(h, []).append(subject)
    return sorted(g for g in by_hash.values() if len(g) > 1)


def split_leaks(groups: list[list[str]], split_of: dict[str, str]) -> list[dict[str, Any]]:
    """Duplicate groups whose prepared subjects sit in more than one split (only imported lists can;
    subjects the lists do not name, split ``unlisted``, are in none)."""
    errors = []
    for g in groups:
        placed = {s: split_of[s] for s in g if split_of.get(s, "unlisted") != "unlisted"}
        if len(set(placed.values())) > 1:
            where = ", ".join(f"{s} in {split}" for s, split in placed.items())
            errors.append(
                {
                    "subjects": list(placed),
                    "reason": f"leak: the same scan is in two splits ({where}); put them in one split",
                }
            )
    return errors
