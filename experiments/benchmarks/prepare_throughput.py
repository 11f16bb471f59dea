"""Dataset-preparation throughput: samples/min per preparer and worker count, side by side in one run.

Builds the real-format fixtures of :mod:`xray3d.testing` in a temporary folder, with ``--copies`` copies of
each subject so several workers have work, then runs every preparer once per ``--workers`` value (fresh
output folder each time, ``force``), and prints samples/min and the ratio to 1 worker. CTPelvic1K and RSNA
are included when ``xray3d.testing.ctpelvic1k`` / ``xray3d.testing.rsna`` (and their preparers) import.

Rules are relaxed for TotalSegmentator (the shared example scan is cut, the default rules reject it) and
for CTPelvic1K (``reject_partial=False``), so every copy yields samples; the work per sample is the same as
with the default rules. Timings are wall-clock around the preparer call (process-pool start-up included),
the best of ``--repeat`` runs.

Example::

    python experiments/benchmarks/prepare_throughput.py --workers 1 2 --copies 4
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

os.environ.setdefault("WANDB_MODE", "disabled")
# every fixture copy is the same scan: the preparers' duplicate-scan warnings say nothing new here
logging.getLogger("xray3d.data.sources").setLevel(logging.ERROR)

RELAXED_TS = {"min_femur_voxels": 0, "reject_partial": False, "min_ribs": 0}


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def build_totalseg(root: Path, copies: int) -> Path:
    from xray3d.testing.totalseg import write_totalseg_fixture

    raw = root / "totalseg"
    write_totalseg_fixture(raw, "v2", n_subjects=copies)
    return raw


def build_verse(root: Path, copies: int) -> Path:
    from xray3d.testing.verse import ct_on_mask_grid, write_verse_fixture

    raw = root / "verse"
    ct = ct_on_mask_grid(root / "verse_ct.nii.gz")
    write_verse_fixture(raw, "bids", [f"sub-verse{100 + i:03d}" for i in range(copies)], ct=ct)
    return raw


def build_ctpelvic1k(root: Path, copies: int) -> Path:
    """The fixture once, then renamed copies (``<case>c<k>``) in sub-folders so case ids stay unique."""
    fixture = importlib.import_module("xray3d.testing.ctpelvic1k")
    base = root / "ctpelvic1k_base"
    fixture.write_ctpelvic1k_fixture(base)
    cases = sorted([*fixture.CUT_CASES, fixture.COLONOG_CASE], key=len, reverse=True)
    raw = root / "ctpelvic1k"
    for k in range(copies):
        for src in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = src.relative_to(base)
            name = rel.name
            case = next((c for c in cases if c in name), None)
            if case is not None and k > 0:
                name = name.replace(case, f"{case}c{k}", 1)
            dst = raw / f"copy{k}" / rel.parent / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return raw


def build_rsna(root: Path, copies: int) -> Path:
    fixture = importlib.import_module("xray3d.testing.rsna")
    raw = root / "rsna"
    uids = tuple(f"1.2.826.0.1.3680043.{91000 + i}" for i in range(copies))
    fixture.write_rsna_fixture(raw, uids=uids)
    return raw


def preparers() -> dict[str, tuple[Callable[[Path, int], Path], Callable[[Path, Path, int], Path]]]:
    """Dataset row name -> (fixture builder, ``prepare(raw, out, workers) -> manifest.csv``)."""
    from xray3d.data.sources.totalseg import prepare_totalseg
    from xray3d.data.sources.verse import prepare_verse

    rows: dict[str, tuple[Callable, Callable]] = {}
    for task in ("femur", "hip", "rib"):
        rows[f"totalseg_{task}"] = (
            build_totalseg,
            lambda raw, out, w, t=task: prepare_totalseg(
                raw, out, t, workers=w, force=True, progress=False, **RELAXED_TS
            ),
        )
    rows["verse2019"] = (
        build_verse,
        lambda raw, out, w: prepare_verse(raw, out, workers=w, force=True, progress=False),
    )
    ctp_fixture, ctp = _optional("xray3d.testing.ctpelvic1k"), _optional("xray3d.data.sources.ctpelvic1k")
    if ctp_fixture is not None and ctp is not None:
        rows["ctpelvic1k"] = (
            build_ctpelvic1k,
            lambda raw, out, w: ctp.prepare_ctpelvic1k(
                raw, out, workers=w, force=True, progress=False, reject_partial=False
            ),
        )
    rsna_fixture, rsna = _optional("xray3d.testing.rsna"), _optional("xray3d.data.sources.rsna")
    if rsna_fixture is not None and rsna is not None:
        rows["rsna"] = (
            build_rsna,
            lambda raw, out, w: rsna.prepare_rsna(raw, out, workers=w, force=True, progress=False),
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Build the fixtures, time every preparer per worker count, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts [1 2]")
    parser.add_argument("--copies", type=int, default=4, help="copies of every fixture subject [4]")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell, best kept [1]")
    parser.add_argument("--datasets", nargs="+", help="only these rows (default: all available)")
    parser.add_argument("--markdown", help="also write the table as markdown to this file")
    args = parser.parse_args(argv)
    if any(w < 1 for w in args.workers) or args.copies < 1 or args.repeat < 1:
        parser.error("--workers, --copies and --repeat must be >= 1")
    workers = sorted(set(args.workers))
    rows_def = preparers()
    if args.datasets:
        unknown = set(args.datasets) - set(rows_def)
        if unknown:
            parser.error(f"unknown or unavailable datasets {sorted(unknown)} (available: {sorted(rows_def)})")
        rows_def = {k: v for k, v in rows_def.items() if k in args.datasets}
    print(f"cpus: {os.cpu_count()}, copies: {args.copies}, workers: {workers}, repeat: {args.repeat}")
    print(f"datasets: {', '.join(rows_def)}", flush=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="xray3d_throughput_") as tmp:
        root = Path(tmp)
        built: dict[Callable, Path] = {}
        for name, (build, prepare) in rows_def.items():
            if build not in built:
                t0 = time.perf_counter()
                built[build] = build(root / "raw", args.copies)
                print(f"fixture {build.__name__}: {time.perf_counter() - t0:.1f} s", flush=True)
            raw = built[build]
            for w in workers:
                best, samples = float("inf"), 0
                for r in range(args.repeat):
                    out = root / "out" / f"{name}_w{w}_r{r}"
                    t0 = time.perf_counter()
                    manifest = prepare(raw, out, w)
                    elapsed = time.perf_counter() - t0
                    samples = len(pd.read_csv(manifest))
                    best = min(best, elapsed)
                    shutil.rmtree(out)
                if samples == 0:
                    print(f"warning: {name} produced no sample", file=sys.stderr)
                records.append(
                    {
                        "dataset": name,
                        "workers": w,
                        "samples": samples,
                        "seconds": best,
                        "samples_per_min": samples / best * 60.0 if best > 0 else 0.0,
                    }
                )
                print(f"  {name} workers={w}: {samples} samples in {best:.2f} s", flush=True)
    df = pd.DataFrame(records)
    base = df[df["workers"] == workers[0]].set_index("dataset")["samples_per_min"]
    df["ratio"] = df.apply(lambda r: r["samples_per_min"] / base[r["dataset"]], axis=1)
    table = df.pivot(index="dataset", columns="workers", values=["samples_per_min", "ratio"])
    table = table.reindex(list(rows_def))
    lines = [
        "| dataset | samples | "
        + " | ".join(f"samples/min w={w}" for w in workers)
        + " | "
        + " | ".join(f"ratio w={w}/w={workers[0]}" for w in workers[1:])
        + " |",
    ]
    lines.append("|" + "---|" * (2 + len(workers) + len(workers) - 1))
    for name in table.index:
        n = int(df[df["dataset"] == name]["samples"].iloc[0])
        rates = " | ".join(f"{table.loc[name, ('samples_per_min', w)]:.1f}" for w in workers)
        ratios = " | ".join(f"{table.loc[name, ('ratio', w)]:.2f}" for w in workers[1:])
        lines.append(f"| {name} | {n} | {rates} | {ratios} |")
    text = "\n".join(lines)
    print()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
