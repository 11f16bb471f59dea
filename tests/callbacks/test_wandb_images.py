"""ReconstructionImages: PNG panels, and at test time ground-truth / predicted meshes as W&B 3D objects."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xray3d.callbacks.wandb_images import ReconstructionImages
from xray3d.data.projection import pir_affine


def _ball(shape: int, radius: float, shift: float = 0.0) -> torch.Tensor:
    g = np.mgrid[:shape, :shape, :shape].astype(float)
    r = np.sqrt(((g - (shape - 1) / 2 - np.array([shift, 0, 0])[:, None, None, None]) ** 2).sum(0))
    return torch.from_numpy((r <= radius).astype(np.float32))


def _batch(n: int = 3, s: int = 16) -> tuple[dict, dict]:
    mask = torch.stack([_ball(s, 4 + i)[None] for i in range(n)])
    pred = torch.stack([_ball(s, 4 + i, shift=1.0)[None] for i in range(n)]) > 0.5
    batch = {
        "ap": torch.rand(n, 1, s, s),
        "lat": torch.rand(n, 1, s, s),
        "mask": mask,
        "sample_id": [f"case{i}" for i in range(n)],
        "affine": torch.stack([pir_affine((s, s, s), 1.5) for _ in range(n)]),
    }
    return batch, {"pred": pred}


def _trainer(loggers: list) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=True, loggers=loggers, global_step=7, sanity_checking=False)


def test_offline_wandb_run_holds_the_test_meshes(tmp_path, monkeypatch):
    import wandb

    from xray3d.utils.wandb_logger import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), project="xray3d-test", offline=True)
    cb = ReconstructionImages(str(tmp_path), max_cases=3, max_meshes=2)
    batch, outputs = _batch()
    cb.on_test_batch_end(_trainer([logger]), None, outputs, batch, batch_idx=0)
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()
    objects = sorted((run_dir / "files" / "media" / "object3D").rglob("*.glb"))
    names = [p.name for p in objects]
    assert len(objects) == 4, names  # 2 cases x (ground truth, prediction)
    assert sum("mesh_gt" in n for n in names) == 2 and sum("mesh_pred" in n for n in names) == 2
    # the GLB files on disk hold closed surfaces in world mm
    import trimesh

    glb = sorted((tmp_path / "images" / "meshes").glob("*_case0_gt.glb"))
    mesh = trimesh.load(glb[0], force="mesh")
    assert (
        mesh.is_watertight and abs(mesh.volume - float(batch["mask"][0].sum()) * 1.5**3) < 0.05 * mesh.volume
    )
    assert len(list((tmp_path / "images").glob("test_step000007_case*.png"))) == 3


def test_no_meshes_without_wandb_or_with_max_meshes_zero(tmp_path):
    batch, outputs = _batch(n=1)
    ReconstructionImages(str(tmp_path), max_cases=1).on_test_batch_end(
        _trainer([]), None, outputs, batch, batch_idx=0
    )
    assert not (tmp_path / "images" / "meshes").exists()
    assert len(list((tmp_path / "images").glob("*.png"))) == 1
    with pytest.raises(ValueError, match="max_meshes"):
        ReconstructionImages(str(tmp_path), max_meshes=-1)
