"""GPU checks (marked ``gpu``; skipped without CUDA): CUDA rendering, a synchronisation-free training
step, ``trainer=gpu`` (bf16-mixed) and ``trainer=ddp`` on 2 GPUs through train.py."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
import torch

from ..conftest import run_python

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.gpu


def test_cuda_rendering_equals_cpu(compose_train):
    cfg = compose_train()
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    cpu = dm.render({"ct": batch["ct"]}, augment=False)
    gpu = dm.render({"ct": batch["ct"].cuda()}, augment=False)
    for key in ("ap", "lat"):
        assert torch.allclose(gpu[key].cpu(), cpu[key], atol=2e-3)


def test_training_step_has_no_host_device_sync(compose_train):
    """Render + forward + backward + optimiser step under bf16 autocast with syncs turned into errors."""
    cfg = compose_train()
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    model = hydra.utils.instantiate(cfg.model, optimizer=hydra.utils.instantiate(cfg.optimizer)).cuda()
    opt = model.configure_optimizers()
    batch = next(iter(dm.train_dataloader()))
    batch = {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            batch = dm.render(batch, augment=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(*model.net_inputs(batch))
                loss = model.loss_fn(logits.float(), batch["mask"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch["ap"].dtype == torch.float32  # rendering stayed fp32 outside autocast


def _train(tmp_path: Path, data_dir: Path, *extra: str):
    args = [
        str(ROOT / "train.py"),
        f"data.data_dir={data_dir}",
        "data.prepare=null",
        "trainer.max_steps=4",
        "trainer.num_sanity_val_steps=0",
        "logger=csv",
        "callbacks.images=null",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
    ]
    return run_python(args, cwd=tmp_path)


def test_trainer_gpu_bf16_run(tmp_path, embedded_small):
    res = _train(tmp_path, embedded_small, "trainer=gpu")
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "metrics" / "summary.json").read_text())
    assert summary["n_cases"] == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_trainer_ddp_two_gpus(tmp_path, embedded_small):
    res = _train(tmp_path, embedded_small, "trainer=ddp", "trainer.devices=2", "trainer.precision=bf16-mixed")
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "metrics" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_cases"] == 1
