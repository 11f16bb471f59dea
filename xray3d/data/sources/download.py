"""Download the public raw datasets of the benchmark (spec §2.1): resumable, checksummed, safely extracted.

``xray3d-download <dataset> --out DIR [--files PATTERN ...] [--list]``

Archives go to ``DIR/downloads/`` (``<file>.part`` while incomplete), verified checksums are recorded in
``DIR/checksums.json``, and archives are extracted into ``DIR/raw/`` (then point the preparation commands
at the dataset folder printed at the end). Sources, as read in January 2026:

* ``totalseg_v1``: TotalSegmentator v1 dataset, Zenodo record 6802614, ``Totalsegmentator_dataset.zip``
  (the reference benchmark's source, ``P:workflow/totalsegmentor/download_links/totalsegmentor_raw.csv``;
  the same URL appears in the TotalSegmentator README and many projects). No checksum is pinned here; the
  md5 is taken from Zenodo's API at run time.
* ``totalseg_v2``: TotalSegmentator v2.0.1 dataset, Zenodo record 10047292,
  ``Totalsegmentator_dataset_v201.zip`` (23,581,218,285 bytes, md5 ``fe250e5718e0a3b5df4c4ea9d58a62fe`` as
  pinned by two independent public download scripts; cross-checked against the API listing at run time).
* ``ctpelvic1k``: CTPelvic1K, Zenodo record 4588403: the masks of all 7 sub-datasets
  (``CTPelvic1K_dataset{1..7}_*mask*.tar.gz``) and the CLINIC / CLINIC-METAL images
  (``CTPelvic1K_dataset{6,7}_data.tar.gz``); md5s pinned from ``P:workflow/ctpelvic1k/download_links/``.
  The images of ABDOMEN, COLONOG, MSD T10, KITS19 and CERVIX are not on Zenodo: ``ctpelvic1k_images``
  prints where to get them.
* ``verse19``: VerSe 2019 (OSF project nqjyw, storage component jtfa5, BIDS "subject based" layout), the
  three folder zips the reference downloads (``P:workflow/verse19/download_links/verse19_raw.csv``). OSF
  builds folder zips on the fly and publishes no checksum for them, so the first verified download records
  its size and sha256 in ``checksums.json`` (trust on first use) and later downloads must match it; the md5
  the reference recorded is compared and only warned about. A restructured copy is also served as plain
  files from ``https://s3.bonescreen.de/public/VerSe-complete/dataset-verse19{training,validation,test}.zip``
  (VerSe GitHub README), usable with ``--url``.
* ``rsna_cervical`` (Kaggle competition, needs an account and accepting the rules) and
  ``ctpelvic1k_images``: written instructions only; the command exits with status 2 without network access.

``--url URL --files NAME`` fetches any HTTP(S) URL instead of the catalogue; ``--url doi:<DOI>/<file>`` takes
the file of a DOI-registered record (Zenodo, Figshare, Dataverse), with its download URL and md5 from the
repository.

What pooch does here, and what is ours:

* pooch reads the repositories: ``pooch.downloaders.ZenodoRepository`` lists a Zenodo record's files with
  their download URLs and md5s (legacy and InvenioRDM API), ``doi_to_repository`` resolves ``doi:`` URLs,
  and ``pooch.file_hash`` computes the md5 and sha256 of a download (one pass over the file each).
* The transfer is ours, on ``requests`` (pooch's HTTP library), because pooch cannot resume: its
  ``HTTPDownloader`` always writes from byte 0 and does not expose the response status, so an interrupted
  23 GB archive would start over. Downloads resume with HTTP ``Range`` into ``<file>.part``; a server that
  ignores ``Range`` restarts the file cleanly. A file is renamed from ``.part`` only after its size and
  checksums are verified; a mismatch deletes the ``.part`` and fails with the expected and actual values.
* Extraction is ours, because pooch's processors are not safe for untrusted archives: ``Unzip`` silently
  rewrites ``..`` and absolute member names instead of refusing the archive and writes symbolic links as
  plain files, and ``Untar`` extracts without a filter before Python 3.12. Zip and tar(.gz) archives are
  checked member by member before anything is written (absolute paths, ``..`` escapes, links pointing
  outside, device files and FIFOs are refused), extracted into a temporary folder inside ``DIR/raw`` and
  moved into place; a marker file makes re-runs skip archives already extracted.

The progress bar is ``rich``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pooch
import requests
import urllib3
from pooch.downloaders import DataRepository, ZenodoRepository, doi_to_repository
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = [
    "DATASETS",
    "ArchiveError",
    "Dataset",
    "DownloadError",
    "RemoteFile",
    "download_dataset",
    "doi_file",
    "download_file",
    "extract_archive",
    "list_files",
    "main",
    "zenodo_files",
]

ZENODO_API = "https://zenodo.org/api/records"
USER_AGENT = f"xray3d-download/0.2 (requests; pooch {pooch.__version__})"
CHUNK = 1 << 20
MARKER_PREFIX = ".extracted-"


class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, size or checksum); the message says what to do."""


class ArchiveError(RuntimeError):
    """An archive is unsafe or unreadable; nothing was extracted."""


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file.

    Attributes:
        name: file name under ``downloads/``.
        url: HTTP(S) URL.
        size: expected size in bytes, if known.
        md5: expected md5 (hex), if published.
        reference_md5: md5 recorded by the reference benchmark for a source that publishes none (a mismatch
            only warns: OSF folder zips are generated on request).
    """

    name: str
    url: str
    size: int | None = None
    md5: str | None = None
    reference_md5: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset the command knows.

    Attributes:
        name: command-line name.
        title: human-readable title.
        kind: ``"zenodo"`` (listing from the Zenodo API), ``"urls"`` (fixed list) or ``"manual"``.
        record: Zenodo record id (``"zenodo"`` only).
        files: fixed files (``"urls"``), or pinned expectations by name (``"zenodo"``).
        default_patterns: file-name patterns fetched when ``--files`` is not given.
        instructions: printed for ``"manual"`` datasets (and after a download, as a note, for the others).
        licence: licence of the data.
    """

    name: str
    title: str
    kind: str
    record: str | None = None
    files: tuple[RemoteFile, ...] = ()
    default_patterns: tuple[str, ...] = ("*",)
    instructions: str = ""
    licence: str = ""


def _zenodo_pin(record: str, name: str, md5: str, size: int | None = None) -> RemoteFile:
    return RemoteFile(name, f"https://zenodo.org/records/{record}/files/{name}?download=1", size, md5)


_OSF = "https://files.de-1.osf.io/v1/resources/jtfa5/providers/osfstorage"

RSNA_INSTRUCTIONS = """\
RSNA 2022 Cervical Spine Fracture Detection (Kaggle competition data; not redistributable, needs a login).

1. Create a Kaggle account, open
   https://www.kaggle.com/competitions/rsna-2022-cervical-spine-fracture-detection/rules
   and accept the competition rules (the download is refused until you do).
2. Install the Kaggle client and an API token: `pip install kaggle`, then Kaggle > Settings > API >
   "Create New Token" and save it as ~/.kaggle/kaggle.json (chmod 600).
3. Download (the full competition archive is very large) and unpack:
     kaggle competitions download -c rsna-2022-cervical-spine-fracture-detection -p {out}
     unzip {out}/rsna-2022-cervical-spine-fracture-detection.zip -d {out}/raw
   Only the 87 studies with a segmentation are used: {out}/raw/segmentations/<StudyInstanceUID>.nii and the
   matching DICOM series {out}/raw/train_images/<StudyInstanceUID>/*.dcm (spec §2.1). To fetch less,
   download single files with `kaggle competitions download -c rsna-2022-cervical-spine-fracture-detection
   -f <path>`, e.g. `-f segmentations/<uid>.nii`, after listing them with `kaggle competitions files -c ...`.
Licence: the competition rules you accept on Kaggle."""

CTPELVIC1K_IMAGES_INSTRUCTIONS = """\
CTPelvic1K images that are not on Zenodo (record 4588403 holds all masks and the CLINIC / CLINIC-METAL
images; `xray3d-download ctpelvic1k` fetches those). The other sub-datasets' CTs come from their own
collections (CTPelvic1K README, github.com/MIRACLE-Center/CTPelvic1K):

* dataset1 ABDOMEN and dataset5 CERVIX: "Multi-Atlas Labeling Beyond the Cranial Vault" (Synapse,
  https://www.synapse.org/#!Synapse:syn3193805/wiki/89480; free Synapse account and data-use terms).
* dataset2 COLONOG: TCIA "CT COLONOGRAPHY" (https://www.cancerimagingarchive.net/collection/ct-colonography/;
  DICOM via the NBIA Data Retriever; one of the prone/supine series per patient).
* dataset3 MSD T10: Medical Segmentation Decathlon Task10_Colon (http://medicaldecathlon.com/,
  Task10_Colon.tar).
* dataset4 KITS19: https://github.com/neheller/kits19 (`python -m starter_code.get_imaging`), or the
  per-case files https://kits19.sfo2.digitaloceanspaces.com/master_<case>.nii.gz the reference lists
  (P:workflow/ctpelvic1k/download_links/kits_raw.csv).
The CTPelvic1K authors also share everything (images included) via Baidu Pan
(https://pan.baidu.com/s/1fSePADF2vfYWySuhvX-h0A, code 1isv).
Put the CTs next to the extracted masks with their original case names before preparing."""

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "totalseg_v1",
            "TotalSegmentator v1 (1204 CTs, 104 structures)",
            "zenodo",
            record="6802614",
            default_patterns=("Totalsegmentator_dataset.zip",),
            licence="CC BY 4.0",
        ),
        Dataset(
            "totalseg_v2",
            "TotalSegmentator v2.0.1 (1228 CTs, 117 structures)",
            "zenodo",
            record="10047292",
            files=(
                _zenodo_pin(
                    "10047292",
                    "Totalsegmentator_dataset_v201.zip",
                    "fe250e5718e0a3b5df4c4ea9d58a62fe",
                    23_581_218_285,
                ),
            ),
            default_patterns=("Totalsegmentator_dataset_v201.zip",),
            licence="CC BY 4.0",
        ),
        Dataset(
            "ctpelvic1k",
            "CTPelvic1K masks (7 sub-datasets) + CLINIC / CLINIC-METAL images",
            "zenodo",
            record="4588403",
            files=tuple(
                _zenodo_pin("4588403", name, md5)
                for name, md5 in [
                    ("CTPelvic1K_dataset1_mask_mappingback.tar.gz", "d82eb3428e4121cb855ce93f898faaf2"),
                    ("CTPelvic1K_dataset2_mask_mappingback.tar.gz", "c1a9c576dba087c08f3d92ea1bfc2e42"),
                    ("CTPelvic1K_dataset3_mask_mappingback.tar.gz", "348173abc9296d93c6399da2de15847a"),
                    ("CTPelvic1K_dataset4_mask_mappingback.tar.gz", "9f2466e4356e1873dddd4d7c2f87b229"),
                    ("CTPelvic1K_dataset5_mask_mappingback.tar.gz", "299326c05f4b674e758dffb5a2a83f86"),
                    ("CTPelvic1K_dataset6_Anonymized_mask.tar.gz", "7696eb7c4da91f989d6842d7b422efd9"),
                    ("CTPelvic1K_dataset7_mask.tar.gz", "d706d26ca3820165c6e883a3777a78a2"),
                    ("CTPelvic1K_dataset6_data.tar.gz", "6b6121e3094cb97bc452db99dd1abf56"),
                    ("CTPelvic1K_dataset7_data.tar.gz", "7dc3b2223ab8c618c746fe90ced299f6"),
                ]
            ),
            default_patterns=("CTPelvic1K_dataset*",),
            instructions=CTPELVIC1K_IMAGES_INSTRUCTIONS,
            licence="non-commercial (see the Zenodo record)",
        ),
        Dataset(
            "verse19",
            "VerSe 2019 (160 CTs, BIDS 'subject based' release on OSF)",
            "urls",
            files=(
                RemoteFile(
                    "dataset-verse19training.zip",
                    f"{_OSF}/5ffca086e80d370320a594cc/?zip=",
                    reference_md5="c15b4e7e974aec858b70c0871c00f185",
                ),
                RemoteFile(
                    "dataset-verse19validation.zip",
                    f"{_OSF}/5ffcb524ba0109031c8931fa/?zip=",
                    reference_md5="36e09f15719d5d4e8387321426aaf739",
                ),
                RemoteFile(
                    "dataset-verse19test.zip",
                    f"{_OSF}/5ffcbd71e80d370336a56f8c/?zip=",
                    reference_md5="a6b4549695593759148934be2aa83c2b",
                ),
            ),
            licence="CC BY-SA 4.0",
        ),
        Dataset(
            "rsna_cervical",
            "RSNA 2022 Cervical Spine Fracture (Kaggle)",
            "manual",
            instructions=RSNA_INSTRUCTIONS,
            licence="Kaggle competition rules",
        ),
        Dataset(
            "ctpelvic1k_images",
            "CTPelvic1K images not on Zenodo",
            "manual",
            instructions=CTPELVIC1K_IMAGES_INSTRUCTIONS,
            licence="per source collection",
        ),
    ]
}


# ----------------------------------------------------------------------------------------------------------
# HTTP (requests, as pooch uses it) and Zenodo / DOI resolution (pooch)


def _describe_http_error(status: int, reason: str, url: str) -> str:
    hints = {
        401: "the server wants a login",
        403: "access refused (a gated dataset, or a rate limit)",
        404: "the file or record does not exist there (moved, or a wrong name)",
        410: "the file was removed",
        429: "too many requests: wait a few minutes and run again",
    }
    hint = hints.get(status, "server error, try again later" if status >= 500 else "")
    return f"HTTP {status} {reason} for {url}" + (f": {hint}" if hint else "")


def _raise_for_status(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
    """``requests`` response hook: an HTTP error (except 416, handled when resuming) is a DownloadError.

    Passed as ``hooks=`` to our requests and, through its ``**kwargs``, to pooch's repository requests, so
    a failing Zenodo API call reports its status instead of a JSON parse error.
    """
    if resp.status_code >= 400 and resp.status_code != 416:
        raise DownloadError(_describe_http_error(resp.status_code, resp.reason, resp.url))


_REQUEST_KWARGS: dict[str, Any] = {
    "headers": {"User-Agent": USER_AGENT},
    "hooks": {"response": [_raise_for_status]},
}


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a chained network error (e.g. ``Connection refused``)."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return getattr(exc, "strerror", None) or str(exc)


@contextlib.contextmanager
def _network_errors(url: str, timeout: float) -> Iterator[None]:
    """Turn ``requests`` connection failures into :class:`DownloadError` saying what to do."""
    try:
        yield
    except requests.exceptions.Timeout as exc:
        raise DownloadError(f"no answer from {url} within {timeout:.0f} s: run again later") from exc
    except requests.exceptions.HTTPError as exc:  # raise_for_status() inside pooch
        raise DownloadError(
            _describe_http_error(exc.response.status_code, exc.response.reason, exc.response.url)
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        raise DownloadError(
            f"cannot reach {urlparse(url).netloc} ({_root_cause(exc)}): check the network connection / "
            "proxy (HTTPS_PROXY) and run again"
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise DownloadError(f"cannot download {url} ({exc})") from exc


def _zenodo_repository(record: str, api: str, timeout: float) -> ZenodoRepository:
    """pooch's Zenodo repository for a record, its API at ``api`` (the record is known: no doi.org hop)."""
    repo = ZenodoRepository(
        f"10.5281/zenodo.{record}", f"https://zenodo.org/records/{record}", timeout=timeout, **_REQUEST_KWARGS
    )
    repo.base_api_url = api.rstrip("/")
    return repo


def _repository_files(repo: DataRepository, where: str, timeout: float) -> list[RemoteFile]:
    """Files of a pooch data repository: names, download URLs and hashes from pooch.

    Sizes are read from the Zenodo API answer pooch fetched (``size``, or ``filesize`` in the new API);
    other repositories give none (the download then checks the checksum only).
    """
    registry = pooch.Pooch(path=".", base_url=f"doi:{repo.doi}/", registry={})
    with _network_errors(where, timeout):
        try:
            repo.populate_registry(registry)
            sizes = {}
            if isinstance(repo, ZenodoRepository):
                sizes = {
                    e.get("key") or e.get("filename"): e.get("size", e.get("filesize"))
                    for e in repo.api_response["files"]
                }
            urls = {name: repo.download_url(name) for name in registry.registry}
        except requests.exceptions.JSONDecodeError as exc:
            raise DownloadError(f"{where} answered with something that is not JSON") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise DownloadError(f"{where} lists no files in a form pooch reads ({exc})") from exc
    files = []
    for name, known_hash in registry.registry.items():
        alg, _, digest = str(known_hash).rpartition(":")
        size = sizes.get(name)
        files.append(
            RemoteFile(
                name, urls[name], int(size) if size is not None else None, digest if alg == "md5" else None
            )
        )
    return files


def zenodo_files(record: str, api: str = ZENODO_API, timeout: float = 60.0) -> list[RemoteFile]:
    """Files of a Zenodo record with size and md5, read through pooch's ``ZenodoRepository``."""
    return _repository_files(_zenodo_repository(record, api, timeout), f"{api.rstrip('/')}/{record}", timeout)


def doi_file(url: str, timeout: float = 60.0) -> RemoteFile:
    """Resolve ``doi:<DOI>/<file name>`` (Zenodo, Figshare, Dataverse) with pooch to a downloadable file."""
    doi, _, name = url.removeprefix("doi:").rpartition("/")
    if not doi or not name:
        raise DownloadError(f"{url!r} is not a DOI file URL: write doi:<DOI>/<file name>")
    with _network_errors(f"https://doi.org/{doi}", timeout):
        try:
            # no status hook here: pooch probes repositories and expects some of them to answer 404
            repo = doi_to_repository(doi, timeout=timeout, headers=_REQUEST_KWARGS["headers"])
        except ValueError as exc:  # not a repository pooch knows
            raise DownloadError(f"doi:{doi}: {exc}") from exc
    files = {f.name: f for f in _repository_files(repo, f"doi:{doi}", timeout)}
    if name not in files:
        raise DownloadError(f"doi:{doi} has no file {name!r}; it has: {', '.join(sorted(files)) or 'none'}")
    return files[name]


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def download_file(
    remote: RemoteFile,
    dest: str | Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    backoff_s: float = 2.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Download ``remote`` to ``dest`` resumably and verify it.

    Bytes go to ``<dest>.part``; an existing ``.part`` is resumed with ``Range: bytes=<size>-`` (a server
    answering 200 instead of 206 restarts it from zero). After the last byte the size and the md5 (when
    known) and ``sha256`` (when given) are checked; on a mismatch the ``.part`` is deleted. Only a verified
    file is renamed to ``dest``. A connection lost mid-file is retried ``retries`` times (resuming).

    Args:
        remote: what to fetch and its expected size / md5.
        dest: final path.
        sha256: expected sha256 (e.g. recorded by an earlier download), if any.
        progress: show a progress bar.
        timeout: socket timeout in seconds.
        retries: resumptions after an interrupted transfer before giving up (the ``.part`` is kept).
        backoff_s: wait before the n-th resumption: ``backoff_s * n`` seconds (at most 30).
        log: where messages go.

    Returns:
        ``{"size", "md5", "sha256"}`` of the verified file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if remote.size is not None and offset > remote.size:
            log(f"{part.name} is larger than {remote.name} ({offset} > {remote.size} bytes): restarting")
            part.unlink()
            offset = 0
        if remote.size is not None and offset == remote.size and offset > 0:
            break  # complete already: verify below
        try:
            _transfer(remote, part, offset, progress, timeout, log)
            break
        except _Interrupted as exc:
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{remote.name}: connection lost after {part.stat().st_size if part.exists() else 0} "
                    f"bytes ({exc}); the partial file {part} is kept: run the same command again to resume"
                ) from None
            log(f"{remote.name}: connection lost ({exc}); resuming (attempt {attempt}/{retries})")
            time.sleep(min(backoff_s * attempt, 30.0))
    return _verify_and_finalise(remote, part, dest, sha256, log)


class _Interrupted(Exception):
    """The transfer stopped before the end (resumable)."""


def _transfer(
    remote: RemoteFile, part: Path, offset: int, progress: bool, timeout: float, log: Callable[[str], None]
) -> None:
    # identity encoding: the bytes on disk are the file's bytes, and Range offsets count them
    headers = {**_REQUEST_KWARGS["headers"], "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    with _network_errors(remote.url, timeout):
        resp = requests.get(
            remote.url, headers=headers, hooks=_REQUEST_KWARGS["hooks"], timeout=timeout, stream=True
        )
    with resp:
        if resp.status_code == 416:  # nothing left to send for this offset
            if remote.size is None or offset < remote.size:
                log(f"{remote.name}: server refused to resume at byte {offset} (HTTP 416); restarting")
                part.unlink(missing_ok=True)
                raise _Interrupted("range not satisfiable")
            return
        mode = "ab"
        if offset > 0 and resp.status_code == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                log(f"{remote.name}: server resumed at byte {start}, not {offset}; restarting")
                part.unlink(missing_ok=True)
                raise _Interrupted("unexpected Content-Range")
        elif offset > 0:
            log(f"{remote.name}: the server ignores Range requests; downloading again from the start")
            mode, offset = "wb", 0
        length = resp.headers.get("Content-Length")
        total = remote.size
        if total is None and length is not None:
            total = offset + int(length)
        received = 0
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            disable=not progress,
        )
        try:
            with bar, open(part, mode) as f:
                task = bar.add_task(remote.name, total=total, completed=offset)
                # raw undecoded reads: a chunk cut short by a dropped connection is still written
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    f.write(chunk)
                    received += len(chunk)
                    bar.advance(task, len(chunk))
        except urllib3.exceptions.HTTPError as exc:  # reset, read timeout, short read (not disk errors)
            raise _Interrupted(f"{type(exc).__name__}: {_root_cause(exc)}") from exc
        if length is not None and received < int(length):
            raise _Interrupted(f"got {received} of {int(length)} bytes")


def _verify_and_finalise(
    remote: RemoteFile, part: Path, dest: Path, sha256: str | None, log: Callable[[str], None]
) -> dict[str, Any]:
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise DownloadError(
            f"{remote.name}: size mismatch (expected {remote.size} bytes, got {size}); the partial file was "
            "deleted: run again"
        )
    got = {alg: pooch.file_hash(str(part), alg=alg) for alg in ("md5", "sha256")}
    for alg, want in (("md5", remote.md5), ("sha256", sha256)):
        if want and got[alg] != want.lower():
            part.unlink()
            raise DownloadError(
                f"{remote.name}: {alg} checksum mismatch (expected {want}, got {got[alg]}); the corrupt "
                f"download was deleted: run again (if it keeps failing, the source changed)"
            )
    if remote.reference_md5 and got["md5"] != remote.reference_md5:
        log(
            f"note: {remote.name} md5 {got['md5']} differs from the md5 the reference benchmark recorded "
            f"({remote.reference_md5}); this source builds the archive on request, so the bytes may differ"
        )
    os.replace(part, dest)
    return {"size": size, **got}


# ----------------------------------------------------------------------------------------------------------
# archives


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def _safe_relpath(name: str, archive: Path) -> str:
    """Normalised relative member path, or :class:`ArchiveError` for absolute paths and ``..`` escapes."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise ArchiveError(f"{archive.name}: member {name!r} has an absolute path; refusing to extract")
    norm = posixpath.normpath(raw)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise ArchiveError(f"{archive.name}: member {name!r} escapes the target folder; refusing to extract")
    return "" if norm == "." else norm


def _check_link(member: str, target: str, archive: Path, hard: bool) -> None:
    """Refuse a link whose target is absolute or resolves outside the extraction root."""
    tgt = target.replace("\\", "/")
    if tgt.startswith("/") or re.match(r"^[A-Za-z]:", tgt):
        raise ArchiveError(
            f"{archive.name}: link {member!r} -> {target!r} points outside; refusing to extract"
        )
    base = "" if hard else posixpath.dirname(member)
    resolved = posixpath.normpath(posixpath.join(base, tgt))
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(
            f"{archive.name}: link {member!r} -> {target!r} points outside; refusing to extract"
        )


def _check_tar(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = []
    for m in tar.getmembers():
        rel = _safe_relpath(m.name, archive)
        if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
            raise ArchiveError(f"{archive.name}: member {m.name!r} is a device or FIFO; refusing to extract")
        if m.issym():
            _check_link(rel, m.linkname, archive, hard=False)
        elif m.islnk():
            _safe_relpath(m.linkname, archive)
            _check_link(rel, m.linkname, archive, hard=True)
        elif not (m.isfile() or m.isdir()):
            raise ArchiveError(
                f"{archive.name}: member {m.name!r} has an unsupported type; refusing to extract"
            )
        if rel:
            members.append(m)
    return members


def _zip_mode(info: zipfile.ZipInfo) -> int:
    """Unix file-type bits of a zip member (0 when the archive records none, e.g. made on Windows)."""
    if info.create_system != 3:  # only Unix-made zips carry st_mode in the high external_attr bits
        return 0
    return stat.S_IFMT((info.external_attr >> 16) & 0xFFFF)


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in zf.infolist():
        rel = _safe_relpath(info.filename, archive)
        mode = _zip_mode(info)
        if stat.S_ISLNK(mode):
            _check_link(rel, zf.read(info).decode("utf-8", "replace"), archive, hard=False)
        elif mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ArchiveError(
                f"{archive.name}: member {info.filename!r} is a device or FIFO; refusing to extract"
            )
        if rel:
            members.append(info)
    return members


def _extract_zip(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], root: Path) -> None:
    for info in members:
        rel = _safe_relpath(info.filename, root)
        target = root / rel
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISLNK(_zip_mode(info)):
            os.symlink(zf.read(info).decode("utf-8"), target)
            continue
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)


def _merge_move(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, merging into existing folders and replacing existing files."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in src.iterdir():
            _merge_move(child, dst / child.name)
        src.rmdir()
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    os.replace(src, dst)


def extract_archive(archive: str | Path, target: str | Path) -> list[str]:
    """Safely extract a zip or tar(.gz/.bz2/.xz) archive into ``target`` (skipped if already done).

    Every member is checked before anything is written; the archive is extracted into a temporary folder
    inside ``target`` and its top-level entries are then moved into ``target``; a marker
    ``target/.extracted-<archive name>.json`` (with the archive size) is written last.

    Args:
        archive: archive file.
        target: destination folder (created if missing).

    Returns:
        The top-level entries the archive created (from the marker on a skipped re-run).
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    marker = target / f"{MARKER_PREFIX}{archive.name}.json"
    size = archive.stat().st_size
    if marker.is_file():
        try:
            meta = json.loads(marker.read_text())
            if meta.get("size") == size:
                return list(meta.get("entries", []))
        except (ValueError, OSError):
            pass
    tmp = target / f".extracting-{archive.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        name = archive.name.lower()
        if name.endswith(".zip"):
            try:
                with zipfile.ZipFile(archive) as zf:
                    _extract_zip(zf, _check_zip(zf, archive), tmp)
            except zipfile.BadZipFile as exc:
                raise ArchiveError(f"{archive.name} is not a readable zip file ({exc})") from exc
        else:
            try:
                with tarfile.open(archive) as tar:
                    members = _check_tar(tar, archive)
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(tmp, members=members, filter="data")
                    else:  # pragma: no cover - Python without PEP 706 (members were checked above)
                        tar.extractall(tmp, members=members)
            except (tarfile.TarError, EOFError, OSError) as exc:
                if isinstance(exc, tarfile.FilterError):
                    raise ArchiveError(f"{archive.name}: unsafe member refused ({exc})") from exc
                raise ArchiveError(f"{archive.name} is not a readable tar archive ({exc})") from exc
        entries = sorted(p.name for p in tmp.iterdir())
        for entry in entries:
            _merge_move(tmp / entry, target / entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(json.dumps({"archive": archive.name, "size": size, "entries": entries}))
    return entries


# ----------------------------------------------------------------------------------------------------------
# datasets


def _load_checksums(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, OSError):
        return {}


def _save_checksums(path: Path, table: dict[str, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True))
    os.replace(tmp, path)


def list_files(dataset: Dataset, zenodo_api: str = ZENODO_API, timeout: float = 60.0) -> list[RemoteFile]:
    """Files a dataset offers (the Zenodo listing, cross-checked with pinned md5s; or the fixed list)."""
    if dataset.kind == "manual":
        return []
    if dataset.kind == "urls":
        return list(dataset.files)
    listed = zenodo_files(dataset.record or "", zenodo_api, timeout)
    pinned = {f.name: f for f in dataset.files}
    out = []
    for f in listed:
        pin = pinned.get(f.name)
        if pin is not None:
            if pin.md5 and f.md5 and pin.md5 != f.md5:
                raise DownloadError(
                    f"Zenodo record {dataset.record} lists md5 {f.md5} for {f.name}, but xray3d pins "
                    f"{pin.md5}: the record changed; check it before using the data"
                )
            if pin.size is not None and f.size is not None and pin.size != f.size:
                raise DownloadError(
                    f"Zenodo record {dataset.record} lists {f.size} bytes for {f.name}, but xray3d pins "
                    f"{pin.size}: the record changed; check it before using the data"
                )
            f = RemoteFile(f.name, f.url, f.size or pin.size, f.md5 or pin.md5)
        out.append(f)
    return out


def _select(files: list[RemoteFile], patterns: Iterable[str]) -> list[RemoteFile]:
    patterns = list(patterns)
    return [f for f in files if any(fnmatch.fnmatchcase(f.name, p) for p in patterns)]


def download_dataset(
    name: str,
    out_dir: str | Path,
    patterns: Iterable[str] | None = None,
    *,
    extract: bool = True,
    progress: bool = True,
    zenodo_api: str = ZENODO_API,
    timeout: float = 60.0,
    retries: int = 3,
    backoff_s: float = 2.0,
    files: list[RemoteFile] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Download (and extract) the files of one dataset.

    Args:
        name: a key of :data:`DATASETS` (not a manual one).
        out_dir: dataset folder; ``downloads/``, ``raw/`` and ``checksums.json`` go there.
        patterns: file-name patterns (``fnmatch``); default: the dataset's default patterns.
        extract: extract archives into ``out_dir/raw``.
        progress: show progress bars.
        zenodo_api: Zenodo records API base URL.
        timeout: socket timeout in seconds.
        retries: resumptions per file after an interrupted transfer.
        backoff_s: see :func:`download_file`.
        files: fetch these instead of the dataset's catalogue (e.g. a mirror URL).
        log: where messages go.

    Returns:
        ``{"files": [names], "downloaded": [names fetched now], "extracted": {archive: [entries]}}``.
    """
    dataset = DATASETS[name]
    if dataset.kind == "manual":
        raise DownloadError(f"{name} cannot be downloaded directly:\n{dataset.instructions}")
    out_dir = Path(out_dir)
    downloads = out_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if files is None:
        files = _select(list_files(dataset, zenodo_api, timeout), patterns or dataset.default_patterns)
    if not files:
        wanted = ", ".join(patterns or dataset.default_patterns)
        raise DownloadError(f"no file of {name} matches {wanted} (see `xray3d-download {name} --list`)")
    checksums_path = out_dir / "checksums.json"
    checksums = _load_checksums(checksums_path)
    fetched, extracted = [], {}
    for remote in files:
        dest = downloads / remote.name
        known = checksums.get(remote.name, {})
        if (
            dest.is_file()
            and known.get("size") == dest.stat().st_size
            and (not remote.md5 or known.get("md5") == remote.md5)
        ):
            log(f"{remote.name}: already downloaded and verified")
        else:
            if dest.is_file():  # present but not recorded as verified: verify it again by re-downloading
                log(f"{remote.name}: present but not verified; downloading again")
                dest.rename(dest.with_name(dest.name + ".part"))
            record = download_file(
                remote,
                dest,
                sha256=known.get("sha256"),
                progress=progress,
                timeout=timeout,
                retries=retries,
                backoff_s=backoff_s,
                log=log,
            )
            source = "md5 published by the source" if remote.md5 else "computed on first download (TOFU)"
            checksums[remote.name] = {**record, "url": remote.url, "verified_by": source}
            _save_checksums(checksums_path, checksums)
            fetched.append(remote.name)
            log(f"{remote.name}: {record['size']} bytes, md5 {record['md5']} ({source})")
        if extract and _is_archive(dest):
            extracted[remote.name] = extract_archive(dest, out_dir / "raw")
    return {"files": [f.name for f in files], "downloaded": fetched, "extracted": extracted}


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``xray3d-download``); exit 0 on success, 1 on an error, 2 for manual datasets."""
    parser = argparse.ArgumentParser(
        prog="xray3d-download",
        description="Download a public raw dataset (resumable, checksummed, safely extracted).",
        epilog="datasets: " + "; ".join(f"{d.name}: {d.title}" for d in DATASETS.values()),
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--out", help="dataset folder (downloads/, raw/, checksums.json)")
    parser.add_argument("--files", nargs="+", metavar="PATTERN", help="only files matching these patterns")
    parser.add_argument("--list", action="store_true", help="list the files (needs network for Zenodo)")
    parser.add_argument(
        "--url",
        help="fetch this URL instead of the catalogue (with --files NAME), or doi:<DOI>/<file name> "
        "(Zenodo, Figshare, Dataverse; name and md5 from the repository)",
    )
    parser.add_argument("--no-extract", action="store_true", help="keep archives packed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds [60]")
    parser.add_argument("--zenodo-api", default=ZENODO_API, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dataset = DATASETS[args.dataset]
    if dataset.kind == "manual":
        print(f"{dataset.title}: not downloadable by this command.\n", file=sys.stderr)
        print(dataset.instructions.format(out=args.out or "DIR"))
        return 2
    try:
        if args.list:
            for f in list_files(dataset, args.zenodo_api, args.timeout):
                check = f"md5 {f.md5}" if f.md5 else "no published checksum"
                if f.reference_md5:
                    check += f" (reference benchmark's md5 {f.reference_md5})"
                print(f"{f.name}\t{_size(f.size)}\t{check}\t{f.url}")
            return 0
        if not args.out:
            parser.error("--out is required to download")
        explicit = None
        if args.url and args.url.startswith("doi:"):
            explicit = [doi_file(args.url, args.timeout)]
        elif args.url:
            if not args.files or len(args.files) != 1 or any(c in args.files[0] for c in "*?["):
                parser.error("--url needs --files with the single file name to save it as")
            explicit = [RemoteFile(args.files[0], args.url)]
        result = download_dataset(
            args.dataset,
            args.out,
            args.files,
            extract=not args.no_extract,
            progress=not args.no_progress,
            zenodo_api=args.zenodo_api,
            timeout=args.timeout,
            files=explicit,
        )
    except (DownloadError, ArchiveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    print(f"{len(result['files'])} file(s) in {out / 'downloads'} ({len(result['downloaded'])} fetched now)")
    for archive, entries in result["extracted"].items():
        print(f"{archive} -> {out / 'raw'}: {', '.join(entries) or '(empty)'}")
    if dataset.instructions:
        print("\nnote: " + dataset.instructions.format(out=args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
