"""The array cache: exact round trip, bad inputs skipped with reasons, resumable, concurrency-safe, lean."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from xray3d.data.array_cache import array_cache_dir, ensure_array_cache, entry_name
from xray3d.data.dataset import ManifestDataset
from xray3d.data.io import DataError

GRID, SPACING = 8, 1.5


def _copy(embedded_small: Path, dest: Path) -> Path:
    shutil.copytree(embedded_small, dest, ignore=shutil.ignore_patterns(".array_cache", ".clinical_cache"))
    return dest


def _files(cache: Path) -> dict[str, bytes]:
    return {p.relative_to(cache).as_posix(): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def test_round_trip_equals_the_nifti_data(embedded_small, tmp_path):
    root = _copy(embedded_small, tmp_path / "ds")
    report = ensure_array_cache(root, root / "manifest.csv", "vertebra", 1.5, 64)
    assert len(report["built"]) == 4 and not report["reused"] and not report["skipped"]
    ds = ManifestDataset(root, root / "manifest.csv", ["train", "val", "test"], "vertebra", 1.5, 64)
    df = pd.read_csv(root / "manifest.csv", dtype={"sample_id": str})
    assert ds.sample_ids == df["sample_id"].tolist() == [m["sample_id"] for m in ds.metadata]
    for i, row in enumerate(df.itertuples()):
        ct_img, mask_img = nib.load(root / row.ct_path), nib.load(root / row.mask_path)
        item = ds[i]
        assert item["ct"].shape == item["mask"].shape == (1, 64, 64, 64)
        assert item["ct"].dtype == item["mask"].dtype == torch.float32
        ct = np.asarray(ct_img.dataobj, dtype=np.float32)
        assert np.abs(item["ct"][0].numpy() - ct).max() <= 0.5
        mask = np.asarray(mask_img.dataobj) > 0.5
        assert np.array_equal(item["mask"][0].numpy(), mask.astype(np.float32))
        assert np.array_equal(ds.mask_array(i), mask) and ds.mask_array(i).dtype == bool
        assert item["affine"].dtype == torch.float64
        assert np.array_equal(item["affine"].numpy(), ct_img.affine)
        assert np.array_equal(ds.affine(i), ct_img.affine)
        assert item["sample_id"] == row.sample_id and item["spacing_mm"] == 1.5
    again = ensure_array_cache(root, root / "manifest.csv", "vertebra", 1.5, 64, splits=["train"])
    assert not again["built"] and len(again["reused"]) == 2
    assert len(pickle.dumps(ds)) < 50_000  # what DataLoader workers receive: ids, paths, affines only


# --------------------------------------------------------------------------- synthetic bad inputs
def _affine(spacing: float = SPACING) -> np.ndarray:
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = [-10.0, 5.0, 2.5]
    return a


def _write(root: Path, name: str, data: np.ndarray, affine: np.ndarray | None = None) -> str:
    path = root / "imgs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, _affine() if affine is None else affine), path)
    return path.relative_to(root).as_posix()


def _good_pair(
    rng: np.random.Generator, shape: tuple[int, ...] = (GRID,) * 3
) -> tuple[np.ndarray, np.ndarray]:
    ct = rng.uniform(-1024, 3000, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    return ct, mask


def _synthetic(root: Path) -> dict[str, tuple[str, str]]:
    """A manifest with one good sample and one of each defect; sample id -> (message part, file named)."""
    rng = np.random.default_rng(0)
    rows, expected = [], {}

    def add(sid: str, ct_rel: str, mask_rel: str, message: str | None = None, named: str | None = None):
        rows.append(
            {"sample_id": sid, "anatomy": "bone", "split": "train", "ct_path": ct_rel, "mask_path": mask_rel}
        )
        if message is not None:
            expected[sid] = (message, named)

    ct, mask = _good_pair(rng)
    add("good", _write(root, "good_ct.nii.gz", ct), _write(root, "good_msk.nii.gz", mask))
    add(
        "missing",
        "imgs/nope_ct.nii.gz",
        _write(root, "missing_msk.nii.gz", mask),
        "not found",
        "nope_ct.nii.gz",
    )
    corrupt = _write(root, "corrupt_ct.nii.gz", ct)
    (root / corrupt).write_bytes((root / corrupt).read_bytes()[:200])
    add(
        "corrupt",
        corrupt,
        _write(root, "corrupt_msk.nii.gz", mask),
        "corrupt or truncated",
        "corrupt_ct.nii.gz",
    )
    add(
        "grid",
        _write(root, "grid_ct.nii.gz", ct),
        _write(root, "grid_msk.nii.gz", mask[:-1]),
        "do not share one grid",
        "grid_msk.nii.gz",
    )
    shifted = _affine()
    shifted[0, 3] += 3.0
    add(
        "affine",
        _write(root, "affine_ct.nii.gz", ct),
        _write(root, "affine_msk.nii.gz", mask, shifted),
        "do not share one grid",
        "affine_msk.nii.gz",
    )
    small_ct, small_mask = _good_pair(rng, (GRID - 2,) * 3)
    add(
        "shape",
        _write(root, "shape_ct.nii.gz", small_ct),
        _write(root, "shape_msk.nii.gz", small_mask),
        "expects (8, 8, 8)",
        "shape_ct.nii.gz",
    )
    add(
        "spacing",
        _write(root, "spacing_ct.nii.gz", ct, _affine(2.0)),
        _write(root, "spacing_msk.nii.gz", mask, _affine(2.0)),
        "voxel size",
        "spacing_ct.nii.gz",
    )
    for bad in ("nan", "inf"):
        data = ct.copy()
        data[1, 2, 3] = np.nan if bad == "nan" else np.inf
        add(
            bad,
            _write(root, f"{bad}_ct.nii.gz", data),
            _write(root, f"{bad}_msk.nii.gz", mask),
            "NaN/inf",
            f"{bad}_ct.nii.gz",
        )
    add(
        "empty",
        _write(root, "empty_ct.nii.gz", ct),
        _write(root, "empty_msk.nii.gz", np.zeros_like(mask)),
        "is empty",
        "empty_msk.nii.gz",
    )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return expected


def test_each_bad_input_is_skipped_with_a_reason_naming_the_file(tmp_path):
    expected = _synthetic(tmp_path)
    report = ensure_array_cache(tmp_path, tmp_path / "manifest.csv", "bone", SPACING, GRID)
    reasons = {s["sample_id"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(expected)
    for sid, (message, named) in expected.items():
        assert message in reasons[sid] and named in reasons[sid], (sid, reasons[sid])
    # a skip is cached too: the re-run reuses it (same reasons) and reads no NIfTI again
    again = ensure_array_cache(tmp_path, tmp_path / "manifest.csv", "bone", SPACING, GRID)
    assert not again["built"] and again["skipped"] == report["skipped"]
    ds = ManifestDataset(tmp_path, tmp_path / "manifest.csv", ["train"], "bone", SPACING, GRID)
    assert ds.sample_ids == ["good"] and {s["sample_id"] for s in ds.skipped} == set(expected)
    # fixing a skipped sample's file (its fingerprint changes) makes it usable
    ct, mask = _good_pair(np.random.default_rng(1))
    _write(tmp_path, "nope_ct.nii.gz", ct)
    report = ensure_array_cache(tmp_path, tmp_path / "manifest.csv", "bone", SPACING, GRID)
    assert report["built"] == ["missing"] and "missing" not in {s["sample_id"] for s in report["skipped"]}


def test_duplicate_ids_and_unsafe_names(tmp_path):
    rng = np.random.default_rng(2)
    ct, mask = _good_pair(rng)
    ct_rel, mask_rel = _write(tmp_path, "a_ct.nii.gz", ct), _write(tmp_path, "a_msk.nii.gz", mask)
    ids = ["sub/01:L1 ü", "sub_01_L1__", "../escape", "sub/01:L1 ü"]
    rows = [
        {"sample_id": s, "anatomy": "bone", "split": "train", "ct_path": ct_rel, "mask_path": mask_rel}
        for s in ids
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    ds = ManifestDataset(tmp_path, tmp_path / "manifest.csv", ["train"], "bone", SPACING, GRID)
    assert ds.sample_ids == ids[:3] and "listed twice" in ds.skipped[0]["reason"]
    names = {entry_name(s) for s in ids[:3]}
    assert len(names) == 3 and all(n == Path(n).name and not n.startswith(".") for n in names)
    cache = array_cache_dir(tmp_path, SPACING, GRID)
    assert {p.parent for p in tmp_path.rglob("*.npy")} == {cache}
    assert all(np.array_equal(ds.mask_array(i), mask > 0) for i in range(3))


def test_damaged_entries_are_detected_and_rebuilt(embedded_small, tmp_path):
    root = _copy(embedded_small, tmp_path / "ds")
    ensure_array_cache(root, root / "manifest.csv", "vertebra", 1.5, 64)
    cache = array_cache_dir(root, 1.5, 64)
    reference = _files(cache)
    t1, t2, t5 = (entry_name(f"chestct_vert-{lvl}") for lvl in ("T1", "T2", "T5"))
    ct_npy = cache / f"{t1}.ct.npy"
    ct_npy.write_bytes(ct_npy.read_bytes()[:5000])  # a build killed mid-write (without the atomic rename)
    (cache / f"{t2}.json").write_text('{"version": 1, "sample_id"')  # truncated sidecar
    (cache / f"{t5}.mask.npy").unlink()
    (cache / f".{t5}.mask.npy.abc.part.npy").write_bytes(b"leftover temp file of a killed builder")
    report = ensure_array_cache(root, root / "manifest.csv", "vertebra", 1.5, 64)
    assert sorted(report["built"]) == ["chestct_vert-T1", "chestct_vert-T2", "chestct_vert-T5"]
    assert report["reused"] == ["chestct_vert-T7"] and not report["skipped"]
    rebuilt = {k: v for k, v in _files(cache).items() if ".part" not in k}
    assert rebuilt == reference
    ds = ManifestDataset(root, root / "manifest.csv", ["train"], "vertebra", 1.5, 64)
    assert ds[0]["ct"].shape == (1, 64, 64, 64)
    (cache / f"{t1}.mask.npy").unlink()  # removed under a running dataset: a clear error, not a crash
    with pytest.raises(DataError, match="missing or damaged"):
        ds.mask_array(0)


def test_changed_source_file_is_rebuilt(embedded_small, tmp_path):
    root = _copy(embedded_small, tmp_path / "ds")
    ds = ManifestDataset(root, root / "manifest.csv", ["train"], "vertebra", 1.5, 64)
    before = ds[0]["ct"].clone()
    row = ds.metadata[0]
    img = nib.load(root / row["ct_path"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 100.0, img.affine, img.header), root / row["ct_path"])
    report = ensure_array_cache(root, root / "manifest.csv", "vertebra", 1.5, 64, splits=["train"])
    assert report["built"] == [row["sample_id"]] and len(report["reused"]) == 1
    ds2 = ManifestDataset(root, root / "manifest.csv", ["train"], "vertebra", 1.5, 64)
    assert (ds2[0]["ct"] - before).abs().sub(100).abs().max() <= 1.0
    assert ds2.fingerprint(0) != ds.fingerprint(0) and ds2.fingerprint(1) == ds.fingerprint(1)
    # another grid is another cache folder; the first one is untouched
    other = ensure_array_cache(root, root / "manifest.csv", "vertebra", 2.0, 64, splits=["train"])
    assert len(other["skipped"]) == 2 and "voxel size" in other["skipped"][0]["reason"]
    assert array_cache_dir(root, 2.0, 64) != array_cache_dir(root, 1.5, 64)


_BUILDER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from xray3d.data.array_cache import ensure_array_cache

    root, go = Path(sys.argv[1]), Path(sys.argv[2])
    Path(sys.argv[3]).touch()  # imported, ready
    while not go.exists():
        time.sleep(0.01)
    print(json.dumps(ensure_array_cache(root, root / "manifest.csv", "vertebra", 1.5, 64)))
    """
)


def _many_rows(root: Path, n_copies: int, split: str = "train") -> None:
    """Rewrite the manifest with ``n_copies`` extra rows (new ids) that reuse T7's files."""
    df = pd.read_csv(root / "manifest.csv", dtype={"sample_id": str})
    t7 = df[df["sample_id"] == "chestct_vert-T7"].iloc[0].to_dict()
    extra = pd.DataFrame([{**t7, "sample_id": f"copy-{i:04d}", "split": split} for i in range(n_copies)])
    pd.concat([df, extra], ignore_index=True).to_csv(root / "manifest.csv", index=False)


def test_two_concurrent_builders_both_succeed_with_identical_files(embedded_small, tmp_path):
    root = _copy(embedded_small, tmp_path / "ds")
    _many_rows(root, 40)
    ref = tmp_path / "ref"
    shutil.copytree(root, ref)  # copy2 keeps mtimes: same fingerprints, so byte-identical sidecars
    ensure_array_cache(ref, ref / "manifest.csv", "vertebra", 1.5, 64)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(root), str(go), str(tmp_path / f"ready{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both start building at once
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert len(report["built"]) + len(report["reused"]) == 44 and not report["skipped"]
        assert report["built"]  # each builder wrote entries: they really ran side by side
    cache = array_cache_dir(root, 1.5, 64)
    assert _files(cache) == _files(array_cache_dir(ref, 1.5, 64))  # no temp files left either
    ds = ManifestDataset(root, root / "manifest.csv", ["train", "val", "test"], "vertebra", 1.5, 64)
    assert len(ds) == 44 and np.array_equal(ds.mask_array(43), ds.mask_array(3))


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from xray3d.data.dataset import ManifestDataset

    def rss_mib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    root = Path(sys.argv[1])
    torch.zeros(1) + 1  # torch's lazy initialisation is not the dataset's memory
    base = peak = rss_mib()
    ds = ManifestDataset(root, root / "manifest.csv", ["train"], "vertebra", 1.5, 64)
    after_init = rss_mib()
    total = 0.0
    for i in range(len(ds)):
        item = ds[i]
        total += float(item["mask"].sum())
        if i % 10 == 0:
            peak = max(peak, rss_mib())
    peak = max(peak, rss_mib())
    print(json.dumps({"n": len(ds), "base": base, "after_init": after_init, "peak": peak, "voxels": total}))
    """
)


def test_memory_does_not_grow_with_the_dataset(embedded_small, tmp_path):
    root = _copy(embedded_small, tmp_path / "ds")
    _many_rows(root, 300)
    ensure_array_cache(root, root / "manifest.csv", "vertebra", 1.5, 64)  # as prepare_data would
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(root)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["n"] == 302  # T1, T2 + 300 copies of T7
    in_ram_mib = r["n"] * 2 * 64**3 * 4 / 2**20  # what the float32 CT + mask list used to hold: ~600 MiB
    growth = r["peak"] - r["base"]
    assert growth < 60 < in_ram_mib / 10, r
    mask_t7 = np.asarray(nib.load(root / "vertebra/chestct_vert-T7_msk.nii.gz").dataobj) > 0.5
    assert r["voxels"] >= 300 * mask_t7.sum()
