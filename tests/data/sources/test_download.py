"""``xray3d-download`` against a local threaded HTTP server (no real network).

The server serves generated files with or without HTTP Range support, a fake Zenodo records API, and can
cut a transfer short; it logs every request with its Range header and the bytes it sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pooch.downloaders
import pytest
import requests

from xray3d.data.sources.download import (
    DATASETS,
    ArchiveError,
    DownloadError,
    RemoteFile,
    doi_file,
    download_dataset,
    download_file,
    extract_archive,
    main,
    zenodo_files,
)


@dataclass
class Served:
    """What the test server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before dropping
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    sent: list[int] = field(default_factory=list)  # body bytes sent per request


def _handler(state: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            state.requests.append((path, rng))
            body = state.files.get(path)
            if body is None:
                self.send_response(404, "Not Found")
                self.send_header("Content-Length", "0")
                self.end_headers()
                state.sent.append(0)
                return
            start, status = 0, 200
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and not state.ignore_range:
                start = int(m.group(1))
                if start >= len(body):
                    self.send_response(416, "Range Not Satisfiable")
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    state.sent.append(0)
                    return
                status = 206
            chunk = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(chunk)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            cut = state.cut_after.pop(path, None)
            payload = chunk if cut is None else chunk[:cut]
            self.wfile.write(payload)
            self.wfile.flush()
            state.sent.append(len(payload))
            if cut is not None:
                self.close_connection = True

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    state = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _payload(n: int, seed: int = 0) -> bytes:
    """``n`` deterministic pseudo-random bytes."""
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _quiet(_msg: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------------------
# single files


def test_full_download_md5_checked(server, tmp_path) -> None:
    base, state = server
    data = _payload(3_000_000)
    state.files["/f.bin"] = data
    remote = RemoteFile("f.bin", f"{base}/f.bin", len(data), _md5(data))
    rec = download_file(remote, tmp_path / "f.bin", progress=False, log=_quiet)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()
    assert rec == {"size": len(data), "md5": _md5(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert state.requests == [("/f.bin", None)]


def test_resume_requests_only_the_remaining_bytes(server, tmp_path) -> None:
    base, state = server
    data = _payload(2_500_000, seed=1)
    state.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data[:1_000_000])  # left by an interrupted run
    remote = RemoteFile("f.bin", f"{base}/f.bin", len(data), _md5(data))
    download_file(remote, tmp_path / "f.bin", progress=False, log=_quiet)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert state.requests == [("/f.bin", "bytes=1000000-")]
    assert state.sent == [len(data) - 1_000_000]


def test_interrupted_transfer_keeps_part_and_resumes(server, tmp_path) -> None:
    base, state = server
    data = _payload(1_500_000, seed=2)
    state.files["/f.bin"] = data
    state.cut_after["/f.bin"] = 600_000  # the connection drops after 600 kB
    remote = RemoteFile("f.bin", f"{base}/f.bin", len(data), _md5(data))
    with pytest.raises(DownloadError, match="connection lost after 600000 bytes.*run the same command again"):
        download_file(remote, tmp_path / "f.bin", progress=False, retries=0, log=_quiet)
    assert (tmp_path / "f.bin.part").stat().st_size == 600_000 and not (tmp_path / "f.bin").exists()
    download_file(remote, tmp_path / "f.bin", progress=False, log=_quiet)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert state.requests[-1] == ("/f.bin", "bytes=600000-") and state.sent[-1] == len(data) - 600_000
    # with retries the same drop is resumed within one call
    state.cut_after["/f.bin"] = 100_000
    download_file(remote, tmp_path / "g.bin", progress=False, retries=2, backoff_s=0, log=_quiet)
    assert (tmp_path / "g.bin").read_bytes() == data
    assert state.requests[-2:] == [("/f.bin", None), ("/f.bin", "bytes=100000-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path) -> None:
    base, state = server
    data = _payload(1_200_000, seed=3)
    state.files["/f.bin"] = data
    state.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"x" * 400_000)  # would corrupt the file if appended to
    messages: list[str] = []
    remote = RemoteFile("f.bin", f"{base}/f.bin", len(data), _md5(data))
    download_file(remote, tmp_path / "f.bin", progress=False, log=messages.append)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert state.requests == [("/f.bin", "bytes=400000-")] and state.sent == [len(data)]
    assert any("ignores Range" in m for m in messages)


def test_checksum_mismatch_deletes_the_part(server, tmp_path) -> None:
    base, state = server
    data = _payload(500_000, seed=4)
    state.files["/f.bin"] = data
    remote = RemoteFile("f.bin", f"{base}/f.bin", len(data), "0" * 32)
    with pytest.raises(
        DownloadError, match=f"md5 checksum mismatch \\(expected 0{{32}}, got {_md5(data)}\\)"
    ):
        download_file(remote, tmp_path / "f.bin", progress=False, log=_quiet)
    assert list(tmp_path.iterdir()) == []
    wrong_size = RemoteFile("f.bin", f"{base}/f.bin", len(data) + 10, None)
    state.cut_after.clear()
    with pytest.raises(DownloadError, match="size mismatch"):
        download_file(wrong_size, tmp_path / "f.bin", progress=False, retries=0, log=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_http_404_and_unreachable_host_messages(server, tmp_path) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match=f"HTTP 404 Not Found for {base}/missing.zip: the file or record"):
        download_file(RemoteFile("m.zip", f"{base}/missing.zip"), tmp_path / "m.zip", progress=False)
    assert list(tmp_path.iterdir()) == []
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Served()))
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there any more
    with pytest.raises(DownloadError, match=f"cannot reach 127.0.0.1:{port} .*check the network"):
        download_file(RemoteFile("x", f"http://127.0.0.1:{port}/x"), tmp_path / "x", progress=False)


# ----------------------------------------------------------------------------------------------------------
# archives


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: dict[str, bytes], special: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in special or []:
            tar.addfile(info)
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


GOOD = {"data/s0001/ct.nii.gz": b"ct", "data/s0001/segmentations/femur_left.nii.gz": b"femur"}


def _snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda d: _zip(d / "a.zip", {**GOOD, "../evil.txt": b"x"}), "escapes the target folder"),
        (lambda d: _zip(d / "a.zip", {"data/../../evil.txt": b"x"}), "escapes the target folder"),
        (lambda d: _zip(d / "a.zip", {**GOOD, "/tmp/evil.txt": b"x"}), "absolute path"),
        (lambda d: _zip(d / "a.zip", GOOD, {"data/link": "../../outside"}), "points outside"),
        (lambda d: _tar(d / "a.tar.gz", {**GOOD, "../evil.txt": b"x"}), "escapes the target folder"),
        (lambda d: _tar(d / "a.tar.gz", {"/abs/evil.txt": b"x"}), "absolute path"),
        (lambda d: _tar(d / "a.tar.gz", GOOD, [_link("data/link", "../../outside")]), "points outside"),
        (lambda d: _tar(d / "a.tar.gz", GOOD, [_link("data/abs", "/etc/passwd")]), "points outside"),
        (
            lambda d: _tar(d / "a.tar.gz", GOOD, [_link("data/hard", "../etc/passwd", tarfile.LNKTYPE)]),
            "escapes the target folder",
        ),
        (lambda d: _tar(d / "a.tar.gz", GOOD, [_device("data/null")]), "device or FIFO"),
    ],
)
def test_unsafe_archives_are_refused_and_nothing_is_written(tmp_path, build, reason) -> None:
    src = tmp_path / "src"
    src.mkdir()
    archive = build(src)
    target = tmp_path / "box" / "raw"
    with pytest.raises(ArchiveError, match=reason):
        extract_archive(archive, target)
    assert list(target.iterdir()) == []  # no partial content, no temp folder, no marker
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "src"]
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["raw"]
    assert [p.name for p in src.iterdir()] == [archive.name]


def test_good_archives_extract_and_rerun_is_a_no_op(tmp_path) -> None:
    target = tmp_path / "raw"
    z = _zip(tmp_path / "v1.zip", GOOD, {"data/latest": "s0001"})
    t = _tar(tmp_path / "masks.tar.gz", {"masks/m1.nii.gz": b"m1", "data/s0002/ct.nii.gz": b"ct2"})
    assert extract_archive(z, target) == ["data"]
    assert extract_archive(t, target) == ["data", "masks"]  # merged into the existing data/
    snap = _snapshot(target)
    assert snap == {
        **GOOD,
        "data/latest": "-> s0001",
        "data/s0002/ct.nii.gz": b"ct2",
        "masks/m1.nii.gz": b"m1",
        ".extracted-v1.zip.json": snap[".extracted-v1.zip.json"],
        ".extracted-masks.tar.gz.json": snap[".extracted-masks.tar.gz.json"],
    }
    mtimes = {p: p.lstat().st_mtime_ns for p in target.rglob("*")}
    (target / "data" / "s0001" / "ct.nii.gz").write_bytes(b"edited by the user")
    assert extract_archive(z, target) == ["data"]  # marker: skipped, the user's edit survives
    assert (target / "data" / "s0001" / "ct.nii.gz").read_bytes() == b"edited by the user"
    assert {p: p.lstat().st_mtime_ns for p in target.rglob("*") if p.name != "ct.nii.gz"} == {
        p: t for p, t in mtimes.items() if p.name != "ct.nii.gz"
    }
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        extract_archive(bad, tmp_path / "raw2")
    assert list((tmp_path / "raw2").iterdir()) == []


# ----------------------------------------------------------------------------------------------------------
# datasets and the command line


def _zenodo(
    state: Served, base: str, record: str, files: dict[str, bytes], md5s: dict[str, str] | None = None
):
    """Serve files and a fake ``/api/records/<record>`` listing (InvenioRDM style) for them."""
    listing = []
    for name, data in files.items():
        state.files[f"/api/records/{record}/files/{name}/content"] = data
        listing.append(
            {
                "key": name,
                "size": len(data),
                "checksum": f"md5:{(md5s or {}).get(name, _md5(data))}",
                "links": {"self": f"{base}/api/records/{record}/files/{name}/content"},
            }
        )
    state.files[f"/api/records/{record}"] = json.dumps({"id": record, "files": listing}).encode()


def test_zenodo_dataset_download_extract_and_rerun(server, tmp_path, capsys) -> None:
    base, state = server
    archive = _zip(tmp_path / "Totalsegmentator_dataset.zip", GOOD)
    other = b"subject,split\ns0001,train\n"
    _zenodo(state, base, "6802614", {"Totalsegmentator_dataset.zip": archive.read_bytes(), "meta.csv": other})
    out = tmp_path / "ts"
    assert (
        main(["totalseg_v1", "--out", str(out), "--zenodo-api", f"{base}/api/records", "--no-progress"]) == 0
    )
    assert "Totalsegmentator_dataset.zip -> " in capsys.readouterr().out
    assert (out / "downloads" / "Totalsegmentator_dataset.zip").read_bytes() == archive.read_bytes()
    assert not (out / "downloads" / "meta.csv").exists()  # default pattern: the dataset zip only
    assert (out / "raw" / "data" / "s0001" / "ct.nii.gz").read_bytes() == b"ct"
    table = json.loads((out / "checksums.json").read_text())
    assert table["Totalsegmentator_dataset.zip"]["md5"] == _md5(archive.read_bytes())
    assert table["Totalsegmentator_dataset.zip"]["verified_by"] == "md5 published by the source"
    n_requests = len(state.requests)
    before = _snapshot(out)
    assert (
        main(["totalseg_v1", "--out", str(out), "--zenodo-api", f"{base}/api/records", "--no-progress"]) == 0
    )
    assert [p for p, _ in state.requests[n_requests:]] == ["/api/records/6802614"]  # listing only
    assert _snapshot(out) == before
    # --files picks other files; --list shows the listing with md5s
    argv = ["totalseg_v1", "--out", str(out), "--zenodo-api", f"{base}/api/records", "--no-progress"]
    assert main([*argv, "--files", "*.csv"]) == 0
    assert (out / "downloads" / "meta.csv").read_bytes() == other
    capsys.readouterr()
    assert main([*argv, "--list"]) == 0
    listed = capsys.readouterr().out
    assert f"meta.csv\t{len(other)} B\tmd5 {_md5(other)}" in listed


def test_pinned_checksum_disagreeing_with_zenodo_is_an_error(server, tmp_path) -> None:
    base, state = server
    name = "CTPelvic1K_dataset6_data.tar.gz"  # pinned md5 from the reference's download list
    data = _payload(1000, seed=5)
    _zenodo(state, base, "4588403", {name: data})
    with pytest.raises(DownloadError, match=f"lists md5 {_md5(data)} for {name}, but xray3d pins"):
        download_dataset("ctpelvic1k", tmp_path, [name], zenodo_api=f"{base}/api/records", progress=False)
    assert not (tmp_path / "downloads" / name).exists()


def test_url_dataset_records_sha256_on_first_download(server, tmp_path) -> None:
    """A source without published checksums (OSF): size + sha256 recorded, then enforced."""
    base, state = server
    payload = _tar(
        tmp_path / "v.tar.gz", {"dataset-verse19test/rawdata/sub-verse004/x.txt": b"v"}
    ).read_bytes()
    state.files["/osf/test.tar.gz"] = payload
    remote = RemoteFile("dataset-verse19test.tar.gz", f"{base}/osf/test.tar.gz", reference_md5="f" * 32)
    messages: list[str] = []
    out = tmp_path / "verse"
    download_dataset("verse19", out, files=[remote], progress=False, log=messages.append)
    rec = json.loads((out / "checksums.json").read_text())["dataset-verse19test.tar.gz"]
    assert rec["sha256"] == hashlib.sha256(payload).hexdigest() and rec["size"] == len(payload)
    assert rec["verified_by"] == "computed on first download (TOFU)"
    assert any("differs from the md5 the reference benchmark recorded" in m for m in messages)
    assert (out / "raw" / "dataset-verse19test" / "rawdata" / "sub-verse004" / "x.txt").read_bytes() == b"v"
    # the file is lost and the source now serves different bytes: the recorded sha256 catches it
    (out / "downloads" / "dataset-verse19test.tar.gz").unlink()
    state.files["/osf/test.tar.gz"] = payload[:-1] + bytes([payload[-1] ^ 0xFF])
    with pytest.raises(DownloadError, match="sha256 checksum mismatch"):
        download_dataset("verse19", out, files=[remote], progress=False, log=_quiet)


def test_gated_datasets_print_instructions_without_network(tmp_path, capsys, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(requests.Session, "send", no_network)  # every requests / pooch call goes through it
    assert main(["rsna_cervical", "--out", str(tmp_path / "rsna")]) == 2
    text = capsys.readouterr().out
    assert (
        f"kaggle competitions download -c rsna-2022-cervical-spine-fracture-detection -p {tmp_path}" in text
    )
    assert "accept the competition rules" in text and "segmentations/<StudyInstanceUID>.nii" in text
    assert main(["ctpelvic1k_images"]) == 2
    text = capsys.readouterr().out
    for source in ("Synapse", "CT COLONOGRAPHY", "Task10_Colon", "kits19"):
        assert source in text
    assert not (tmp_path / "rsna").exists()
    assert {d.name for d in DATASETS.values() if d.kind == "manual"} == {"rsna_cervical", "ctpelvic1k_images"}


def test_cli_errors_are_reported(server, tmp_path, capsys) -> None:
    base, _ = server
    argv = ["totalseg_v2", "--out", str(tmp_path), "--zenodo-api", f"{base}/api/records", "--no-progress"]
    assert main(argv) == 1
    assert f"error: HTTP 404 Not Found for {base}/api/records/10047292" in capsys.readouterr().err


def test_doi_url_is_resolved_by_pooch_and_resumable(server, tmp_path, monkeypatch) -> None:
    """``--url doi:<DOI>/<file>``: pooch resolves the record (doi.org faked), our transfer fetches it."""
    base, state = server
    archive = _zip(tmp_path / "bones.zip", GOOD).read_bytes()
    _zenodo(state, base, "777", {"bones.zip": archive, "readme.txt": b"r"})
    resolved: list[str] = []

    def fake_doi_org(doi: str, **kwargs) -> str:
        resolved.append(doi)
        return "https://zenodo.org/records/777"

    monkeypatch.setattr(pooch.downloaders, "doi_to_url", fake_doi_org)
    monkeypatch.setattr(pooch.downloaders.ZenodoRepository, "base_api_url", f"{base}/api/records")
    out = tmp_path / "ts"
    (out / "downloads").mkdir(parents=True)
    (out / "downloads" / "bones.zip.part").write_bytes(archive[:100])  # an interrupted earlier run
    argv = ["totalseg_v2", "--out", str(out), "--no-progress", "--url", "doi:10.5281/zenodo.777/bones.zip"]
    assert main(argv) == 0
    assert resolved == ["10.5281/zenodo.777"]
    assert state.requests[-1] == ("/api/records/777/files/bones.zip/content", "bytes=100-")
    assert (out / "downloads" / "bones.zip").read_bytes() == archive
    rec = json.loads((out / "checksums.json").read_text())["bones.zip"]
    assert rec["md5"] == _md5(archive) and rec["verified_by"] == "md5 published by the source"
    assert (out / "raw" / "data" / "s0001" / "ct.nii.gz").read_bytes() == b"ct"
    with pytest.raises(DownloadError, match="has no file 'nope.zip'; it has: bones.zip, readme.txt"):
        download_dataset("totalseg_v2", out, files=[doi_file("doi:10.5281/zenodo.777/nope.zip")])


def test_zenodo_answer_that_is_not_json_is_reported(server, tmp_path) -> None:
    base, state = server
    state.files["/api/records/6802614"] = b"<html>maintenance</html>"
    with pytest.raises(
        DownloadError, match=f"{base}/api/records/6802614 answered with something that is not"
    ):
        zenodo_files("6802614", f"{base}/api/records")
    state.files["/api/records/6802614"] = json.dumps({"id": 6802614, "hits": []}).encode()
    with pytest.raises(DownloadError, match="lists no files in a form pooch reads"):
        download_dataset("totalseg_v1", tmp_path, zenodo_api=f"{base}/api/records", progress=False)
    assert not (tmp_path / "downloads" / "Totalsegmentator_dataset.zip").exists()


def test_progress_bar_download(server, tmp_path, capsys) -> None:
    base, state = server
    data = _payload(300_000, seed=6)
    state.files["/f.bin"] = data
    download_file(RemoteFile("f.bin", f"{base}/f.bin", len(data), _md5(data)), tmp_path / "f.bin", log=_quiet)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert "f.bin" in capsys.readouterr().out  # rich drew the bar with the file name
