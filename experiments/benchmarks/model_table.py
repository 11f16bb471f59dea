"""Size, speed and memory of every model config (``conf/model/*.yaml``), built from its Hydra config.

For each model the network is composed exactly as ``python train.py model=<name> data.grid_size=<s>`` would
build it (reference settings) and measured in a fresh subprocess, so one model's allocations never count
for the next:

* **parameters** at 64³ and 128³: all of them, and the trainable ones (TLPredictor's stage-1 decoder is
  frozen; its count includes that decoder).
* **CPU step**: forward + backward (the config's loss, no optimizer step) at ``--cpu-size`` (64³),
  batch 1, median of ``--repeats`` timed steps after one warm-up step, with ``torch.set_num_threads``
  stated in the output. OneDConcat runs batch 2 (its BatchNorm1d bottleneck cannot train on one sample)
  and is reported per sample (time / 2).
* **CPU memory**: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the subprocess, the high-water resident
  set size: "peak RSS" after the timed steps, and "step ΔRSS" = the peak after the first forward+backward
  minus the peak after building the model and its input (activations, gradients, workspace).
  ``tracemalloc`` does not see torch's allocator, so it is not used.
* **GPU** (only when CUDA is available): median forward+backward time and
  ``torch.cuda.max_memory_allocated`` at ``--gpu-size`` (128³), batch 1, in fp32 and under
  ``torch.autocast`` with bf16 and fp16 (fp16 with a ``GradScaler``, as the reference's ``precision=16``).

Usage::

    python experiments/benchmarks/model_table.py [--models unet swinunetr ...] [--threads 2] [--repeats 3]
        [--cpu-size 64] [--gpu-size 128] [--no-gpu] [--markdown out.md] [--json out.json]

Run it on a quiet machine: CPU contention distorts the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
# Spec §3.1 parameter counts at s=128 (for comparison only; the models are built from their configs).
SPEC_128 = {
    "swinunetr": "62.19M",
    "unetr": "96.16M",
    "attention_unet": "1.48M",
    "unet": "1.20M",
    "multiscale_2d_permute_concat": "3.16M",
    "twod_permute_concat": "1.25M",
    "oned_concat": "40.62M",
    "tl_predictor": "2.17M (+ AE 4.37M)",
    "tl_autoencoder": "4.37M",
}
MIN_BATCH = {"oned_concat": 2}  # BatchNorm1d on the fused code needs two samples in training mode


def model_names() -> list[str]:
    """Every model config, as ``model=<name>`` accepts it."""
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if not p.stem.startswith("_"))


# ------------------------------------------------------------------------------------------ child side
def _build(model: str, size: int):
    """The ``ReconstructionModule`` of ``model=<model> data.grid_size=<size>`` (no checkpoint is loaded)."""
    import hydra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = [f"model={model}", f"data.grid_size={size}"]
        if model == "tl_predictor":
            # Timing only: a random frozen decoder costs the same as a trained one.
            overrides.append("model.net.require_autoencoder=false")
        cfg = compose(config_name="train", overrides=overrides)
    return hydra.utils.instantiate(cfg.model, optimizer=hydra.utils.instantiate(cfg.optimizer))


def _batch(size: int, batch: int, device: str = "cpu") -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(batch, 1, size, size, size, generator=g) > 0.7).float()
    views = {k: torch.rand(batch, 1, size, size, generator=g) for k in ("ap", "lat")}
    return {k: v.to(device) for k, v in {"mask": mask, **views}.items()}


def _step(module, batch: dict, autocast_dtype=None, scaler=None) -> None:
    import torch

    device = batch["mask"].device.type
    with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = module(*module.net_inputs(batch))
        loss = module.loss_fn(logits.float(), batch["mask"])
    (scaler.scale(loss) if scaler is not None else loss).backward()
    module.zero_grad(set_to_none=True)


def _maxrss_mb() -> float:
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _time_steps(module, batch: dict, repeats: int, sync=None, **kw) -> list[float]:
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        _step(module, batch, **kw)
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def measure(model: str, args: argparse.Namespace) -> dict:
    """All numbers of one model (run inside the child process)."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict = {"model": model}
    batch_size = MIN_BATCH.get(model, 1)
    out["cpu_batch"] = batch_size

    module = _build(model, args.cpu_size).train()
    batch = _batch(args.cpu_size, batch_size)
    base = _maxrss_mb()
    _step(module, batch)  # warm-up, also the memory high-water mark of one step
    out["cpu_step_delta_rss_mb"] = _maxrss_mb() - base
    times = _time_steps(module, batch, args.repeats)
    out["cpu_ms_per_sample"] = 1e3 * statistics.median(times) / batch_size
    out["cpu_peak_rss_mb"] = _maxrss_mb()
    del module, batch

    for size in sorted({64, 128, args.cpu_size}):
        module = _build(model, size)
        out[f"params_{size}"] = sum(p.numel() for p in module.parameters())
        out[f"trainable_{size}"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
        del module

    if args.gpu and torch.cuda.is_available():
        out["gpu_name"] = torch.cuda.get_device_name()
        module = _build(model, args.gpu_size).train().cuda()
        batch = _batch(args.gpu_size, batch_size, "cuda")
        modes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        for name, dtype in modes.items():
            kw = {"autocast_dtype": dtype}
            if dtype is torch.float16:
                kw["scaler"] = torch.amp.GradScaler("cuda")
            try:
                _step(module, batch, **kw)  # warm-up
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                times = _time_steps(module, batch, args.repeats, sync=torch.cuda.synchronize, **kw)
                out[f"gpu_{name}_ms_per_sample"] = 1e3 * statistics.median(times) / batch_size
                out[f"gpu_{name}_max_alloc_mb"] = torch.cuda.max_memory_allocated() / 2**20
            except torch.cuda.OutOfMemoryError:
                out[f"gpu_{name}_ms_per_sample"] = out[f"gpu_{name}_max_alloc_mb"] = "OOM"
                torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------- parent side
def _run_child(model: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model, *_shared_args(args)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"model": model, "error": f"exit {res.returncode}: {tail[0][:200]}"}
    return json.loads(lines[-1])


def _shared_args(args: argparse.Namespace) -> list[str]:
    out = ["--threads", str(args.threads), "--repeats", str(args.repeats), "--cpu-size", str(args.cpu_size)]
    out += ["--gpu-size", str(args.gpu_size)]
    return out + ([] if args.gpu else ["--no-gpu"])


def _fmt_params(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M"


def _fmt(x, spec: str = "{:.0f}") -> str:
    if x is None:
        return ""
    return x if isinstance(x, str) else spec.format(x)


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The table and how it was measured."""
    import torch

    s = args.cpu_size
    gpu = any("gpu_name" in r for r in rows)
    header = [
        "model",
        "params @64",
        "params @128",
        "trainable @128",
        "spec §3.1 @128",
        f"CPU fwd+bwd ms/sample @{s}",
        "CPU peak RSS MB",
        "CPU step ΔRSS MB",
    ]
    if gpu:
        g = args.gpu_size
        for mode in ("fp32", "bf16", "fp16"):
            header += [f"GPU {mode} ms @{g}", f"GPU {mode} max alloc MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | " + r["error"] + " |" * (len(header) - 1))
            continue
        cells = [
            r["model"] + (f" (batch {r['cpu_batch']})" if r["cpu_batch"] != 1 else ""),
            _fmt_params(r.get("params_64")),
            _fmt_params(r.get("params_128")),
            _fmt_params(r.get("trainable_128")),
            SPEC_128.get(r["model"], ""),
            _fmt(r.get("cpu_ms_per_sample")),
            _fmt(r.get("cpu_peak_rss_mb")),
            _fmt(r.get("cpu_step_delta_rss_mb")),
        ]
        if gpu:
            for mode in ("fp32", "bf16", "fp16"):
                cells += [
                    _fmt(r.get(f"gpu_{mode}_ms_per_sample"), "{:.1f}"),
                    _fmt(r.get(f"gpu_{mode}_max_alloc_mb")),
                ]
        lines.append("| " + " | ".join(cells) + " |")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    notes = [
        "",
        f"Measured {datetime.now():%Y-%m-%d %H:%M} with torch {torch.__version__} on {cpu} "
        f"({os.cpu_count()} logical CPUs), torch threads = {args.threads}; one fresh process per model.",
        f"CPU: forward + backward with the config's loss (no optimizer step), batch 1 at {s}³, median of "
        f"{args.repeats} step(s) after 1 warm-up step; OneDConcat at batch 2, per sample.",
        "CPU memory: ru_maxrss (high-water RSS) of the model's process; step ΔRSS = high-water mark after "
        "the first forward+backward minus that after building the model and its input.",
    ]
    if gpu:
        name = next(r["gpu_name"] for r in rows if "gpu_name" in r)
        notes.append(
            f"GPU: {name}, batch 1 at {args.gpu_size}³, torch.cuda.max_memory_allocated over the timed "
            "steps; bf16/fp16 = torch.autocast (fp16 with GradScaler)."
        )
    else:
        notes.append("GPU: no CUDA device available, GPU columns omitted.")
    notes.append("Command: `python experiments/benchmarks/model_table.py " + " ".join(sys.argv[1:]) + "`")
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Measure every model (each in its own subprocess) and print / write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="model config names (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-size", type=int, default=64)
    parser.add_argument("--gpu-size", type=int, default=128)
    parser.add_argument("--no-gpu", dest="gpu", action="store_false")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()

    if args.child:
        print(json.dumps(measure(args.child, args)), flush=True)
        return

    models = args.models or model_names()
    unknown = sorted(set(models) - set(model_names()))
    if unknown:
        parser.error(f"unknown model config(s) {unknown}; available: {model_names()}")
    rows = []
    for model in models:
        t0 = time.perf_counter()
        rows.append(_run_child(model, args))
        print(f"[model_table] {model}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    table = to_markdown(rows, args)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
