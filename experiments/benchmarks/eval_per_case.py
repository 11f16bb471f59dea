"""Time to evaluate one case (image metrics + the anatomy's clinical parameters) vs a model forward pass.

Evaluation runs once per test case on the CPU (``MetricsReport``), so it must stay well below the time of
the network's forward pass for the same case. For each anatomy this script takes a real ground-truth mask
from ``../shared/data/xrayto3d-masks`` (true spacings set: femur 1.0 mm, rib 2.5 mm; the hip and
vertebra masks are resampled onto their training grids, 128³ @ 2.25 mm and 64³ @ 1.5 mm), builds a
plausible "prediction" from it (shifted by 2 voxels and eroded once, so every distance is non-trivial),
and times in one process:

* ``metrics``: :func:`xray3d.metrics.image.binary_metrics` (Dice, HD95, ASD, NSD in mm);
* ``clinical``: the anatomy's ``measure`` (``conf/clinical/<anatomy>.yaml``) on GT and prediction and
  their errors (:func:`xray3d.clinical.evaluate.measure_pair`); ``GT cached``: the same with the ground
  truth's measurement read from :class:`~xray3d.clinical.cache.MeasurementCache` (every evaluation of a
  test set after the first);
* ``case``: the whole case as the test loop evaluates it (:func:`xray3d.callbacks.metrics_report.
  evaluate_case`: the image metrics in a second thread beside the clinical part), with the ground truth
  measured and with it cached;
* ``forward``: each model config's network (default unet, attention_unet, swinunetr; reference settings)
  on a batch of one at the same grid size, ``torch.no_grad``, after one warm-up pass.

Usage::

    python experiments/benchmarks/eval_per_case.py [--anatomies femur hip vertebra rib] [--models unet ...]
        [--repeats 5] [--threads 2]

Prints the median seconds of each part and the ratios case / forward per model, with the ground truth
measured and with it cached. ``--pipeline-cases N`` also times a test loop of N cases
(forward + metrics + clinical, ground truth cached) with the evaluation inline vs in background
processes (``MetricsReport(workers=...)``), against the forward alone; with ``--threads 1`` and one worker
on a 2-core machine this shows how much of the evaluation hides behind the forward pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("XRAY3D_SHARED_DATA", REPO.parent / "shared" / "data")) / "xrayto3d-masks"

# file, true isotropic spacing (mm) or None (header), training grid (size, spacing mm)
CASES = {
    "femur": ("s0015_femur_left_msk_gt.nii.gz", 1.0, (128, 1.0)),
    "hip": ("COLONOG-0001_hip_msk.nii.gz", None, (128, 2.25)),
    "vertebra": ("sub-verse004_vert-23-seg-vert_msk.nii.gz", None, (64, 1.5)),
    "rib": ("s0046_rib_msk_gt.nii.gz", 2.5, (128, 2.5)),
}


def load_case(anatomy: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(mask on the training grid, its affine, spacing mm) of the anatomy's real mask."""
    import nibabel as nib
    import torch
    import torchio as tio

    name, true_spacing, (grid, spacing) = CASES[anatomy]
    path = SHARED / name
    if not path.is_file():
        sys.exit(f"missing {path}: set XRAY3D_SHARED_DATA to the folder holding xrayto3d-masks/")
    img = nib.load(path)
    affine = np.asarray(img.affine, dtype=float).copy()
    if true_spacing is not None:
        affine[:3, :3] = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0) * true_spacing
    data = (np.asanyarray(img.dataobj) > 0).astype(np.uint8)
    if data.shape != (grid,) * 3 or not np.allclose(np.linalg.norm(affine[:3, :3], axis=0), spacing):
        lab = tio.LabelMap(tensor=torch.from_numpy(data)[None], affine=affine)
        lab = tio.Resample(spacing)(lab)
        lab = tio.CropOrPad((grid,) * 3)(lab)
        data, affine = lab.data[0].numpy(), np.asarray(lab.affine, dtype=float)
    # C order, as the test loop's masks (from torch tensors) are; NIfTI arrays load in Fortran order
    return np.ascontiguousarray(data, dtype=bool), affine, float(spacing)


def fake_prediction(gt: np.ndarray) -> np.ndarray:
    """GT shifted by 2 voxels along the first axis and eroded once."""
    from scipy import ndimage

    return ndimage.binary_erosion(np.roll(gt, 2, axis=0))


def build_net(model: str, grid: int):
    """The network of ``conf/model/<model>.yaml`` at ``grid``³, as train.py builds it."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"data.grid_size={grid}"])
    return instantiate(cfg.model.net).eval()


def _seconds(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_eval(anatomy: str, repeats: int) -> dict:
    """Median seconds of the image metrics, of the clinical parameters (GT + prediction), of the clinical
    parameters with the ground truth's measurement already cached (a later evaluation), and of the whole
    case as the test loop evaluates it (``evaluate_case``: metrics in a thread beside the clinical part),
    with the ground truth measured and cached."""
    import tempfile

    from xray3d.clinical.cache import MeasurementCache
    from xray3d.clinical.cli import load_measure
    from xray3d.clinical.evaluate import measure_pair
    from xray3d.evaluation.engine import evaluate_case
    from xray3d.metrics.image import binary_metrics

    gt, affine, spacing = load_case(anatomy)
    pred = fake_prediction(gt)
    measure = load_measure(anatomy)
    status = measure_pair(measure, gt, pred, affine)[0]["clinical_status"]  # also a warm-up
    parts = ("metrics", "clinical", "clinical_cached", "case", "case_cached")
    t: dict[str, list[float]] = {k: [] for k in parts}
    with tempfile.TemporaryDirectory() as tmp:
        cache = MeasurementCache(tmp, measure)
        cache(gt, affine)  # fill
        for _ in range(repeats):
            t["metrics"].append(_seconds(binary_metrics, pred, gt, spacing))
            t["clinical"].append(_seconds(measure_pair, measure, gt, pred, affine))
            t["clinical_cached"].append(_seconds(measure_pair, measure, gt, pred, affine, cache))
            t["case"].append(_seconds(evaluate_case, pred, gt, spacing, 1.5, (measure, affine, None)))
            t["case_cached"].append(_seconds(evaluate_case, pred, gt, spacing, 1.5, (measure, affine, cache)))
    return {"grid": gt.shape[0], "status": status, **{k: statistics.median(v) for k, v in t.items()}}


def bench_forward(model: str, grid: int, repeats: int) -> float:
    """Median seconds of one no-grad forward pass (batch 1) of the model config at ``grid``³."""
    import torch

    net = build_net(model, grid)
    ap, lat = torch.rand(1, 1, grid, grid), torch.rand(1, 1, grid, grid)
    with torch.no_grad():
        net(ap, lat)  # warm-up
        return statistics.median(_seconds(net, ap, lat) for _ in range(repeats))


def bench_pipeline(anatomy: str, model: str, n_cases: int, workers: int) -> dict:
    """Wall seconds per case of a test loop (forward + image metrics + clinical): evaluation inline vs in
    ``workers`` background processes (image metrics and clinical, as ``MetricsReport(workers=...)``
    does), and of the forward alone. The ground truth's measurement is cached (``xray3d-measure-gt``)."""
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from xray3d.clinical.cache import MeasurementCache
    from xray3d.clinical.cli import load_measure
    from xray3d.evaluation.engine import evaluate_case

    gt, affine, spacing = load_case(anatomy)
    pred = fake_prediction(gt)
    grid = gt.shape[0]
    net = build_net(model, grid)
    ap, lat = torch.rand(1, 1, grid, grid), torch.rand(1, 1, grid, grid)
    measure = load_measure(anatomy)
    out = {}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        cache = MeasurementCache(tmp, measure)
        cache(gt, affine)
        net(ap, lat)
        t0 = time.perf_counter()
        for _ in range(n_cases):
            net(ap, lat)
        out["forward only"] = (time.perf_counter() - t0) / n_cases
        t0 = time.perf_counter()
        args = (pred, gt, spacing, 1.5, (measure, affine, cache))
        for _ in range(n_cases):
            net(ap, lat)
            evaluate_case(*args)  # as MetricsReport(workers=0) does after each batch
        out["inline"] = (time.perf_counter() - t0) / n_cases
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(evaluate_case, *args).result()  # start the workers
            t0 = time.perf_counter()
            futures = []
            for _ in range(n_cases):
                net(ap, lat)
                futures.append(pool.submit(evaluate_case, *args))
            for f in futures:
                f.result()
            out[f"background ({workers} worker)"] = (time.perf_counter() - t0) / n_cases
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--anatomies", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--models", nargs="+", default=["unet", "attention_unet", "swinunetr"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--pipeline-cases", type=int, default=0, help="also time a test loop of N cases per anatomy"
    )
    p.add_argument("--pipeline-workers", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}, median of {args.repeats}; forward = no-grad, batch 1")
    cols = ["anatomy", "grid", "metrics s", "clinical s (GT+pred / pred)", "case s (GT measured / cached)"]
    cols += [f"{m} fwd s (case / case GT cached, per fwd)" for m in args.models] + ["clinical"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    fwd: dict[tuple[str, int], float] = {}
    for anatomy in args.anatomies:
        r = bench_eval(anatomy, args.repeats)
        grid, ev, cached = r["grid"], r["case"], r["case_cached"]
        cells = [
            anatomy,
            f"{grid}³",
            f"{r['metrics']:.3f}",
            f"{r['clinical']:.3f} / {r['clinical_cached']:.3f}",
            f"{ev:.3f} / {cached:.3f}",
        ]
        for model in args.models:
            if (model, grid) not in fwd:
                fwd[model, grid] = bench_forward(model, grid, args.repeats)
            f = fwd[model, grid]
            cells.append(f"{f:.3f} ({ev / f:.2f} / {cached / f:.2f})")
        print("| " + " | ".join(cells + [r["status"]]) + " |")
    if args.pipeline_cases:
        print(f"\ntest loop of {args.pipeline_cases} cases, {args.models[0]}: wall seconds per case")
        for anatomy in args.anatomies:
            res = bench_pipeline(anatomy, args.models[0], args.pipeline_cases, args.pipeline_workers)
            print(f"{anatomy}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
