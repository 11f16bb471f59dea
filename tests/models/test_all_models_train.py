"""Every model config trains: one optimizer step of the real Hydra config, then (slow) real runs.

Fast test: each ``conf/model/*.yaml`` composed with ``data.grid_size=32`` takes one Adam step of
``ReconstructionModule.training_step`` on a synthetic 32³ batch (a blob and its two projections). To stay
fast on 2 CPU cores two models are reduced there:

* UNETR: hidden 96, mlp 192, 4 heads, feature_size 8 (reference 768 / 3072 / 12 / 16);
* SwinUNETR: feature_size 12 (reference 48) and batch norm instead of instance norm (instance norm needs a
  grid of at least 64).

The slow tests use the reference settings unchanged: one step at the reference grids 64 (vertebra) and 128
(femur, hip, rib), and ``train.run`` + ``evaluate.run`` on the embedded vertebrae for every model.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import DictConfig

from xray3d import CONF_DIR
from xray3d.models.module import ReconstructionModule
from xray3d.models.nets.tl_embedding import TLAutoEncoder
from xray3d.pipeline import evaluate, train

from ..conftest import compose_cfg

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml") if not p.stem.startswith("_"))
FAST = 32
FAST_REDUCTIONS = {
    "unetr": [
        "model.net.net.hidden_size=96",
        "model.net.net.mlp_dim=192",
        "model.net.net.num_heads=4",
        "model.net.net.feature_size=8",
    ],
    "swinunetr": ["model.net.net.feature_size=12", "model.net.net.norm_name=batch"],
}


def _autoencoder_ckpt(tmp_path: Path, size: int) -> Path:
    """A freshly initialised stage-1 autoencoder saved as a plain state dict (stands in for stage 1)."""
    path = tmp_path / f"autoencoder_{size}.pt"
    if not path.is_file():
        torch.save(TLAutoEncoder(img_size=size).state_dict(), path)
    return path


def _compose(model: str, size: int, tmp_path: Path, extra: list[str] = (), data_dir: Path | None = None):
    overrides = [f"model={model}", f"data.grid_size={size}", *extra]
    if model == "tl_predictor":
        overrides.append(f"model.net.autoencoder_ckpt={_autoencoder_ckpt(tmp_path, size)}")
    return compose_cfg("train", overrides, tmp_path / "run", data_dir)


def _module(cfg: DictConfig) -> ReconstructionModule:
    return hydra.utils.instantiate(cfg.model, optimizer=hydra.utils.instantiate(cfg.optimizer))


def _blob_batch(size: int, batch: int, seed: int = 0) -> dict:
    """Ellipsoid masks (PIR) with their AP (sum along P) and LAT (sum along R) projections, min-max scaled."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1, 1, size)
    p, i, r = torch.meshgrid(axis, axis, axis, indexing="ij")
    masks = []
    for _ in range(batch):
        c = (torch.rand(3, generator=g) - 0.5) * 0.4
        radii = 0.3 + 0.3 * torch.rand(3, generator=g)
        masks.append(
            ((p - c[0]) / radii[0]) ** 2 + ((i - c[1]) / radii[1]) ** 2 + ((r - c[2]) / radii[2]) ** 2 < 1
        )
    mask = torch.stack(masks)[:, None].float()

    def norm(x):
        lo = x.amin(dim=(-2, -1), keepdim=True)
        hi = x.amax(dim=(-2, -1), keepdim=True)
        return (x - lo) / (hi - lo).clamp_min(1e-6)

    return {"ap": norm(mask.sum(2)), "lat": norm(mask.sum(-1)), "mask": mask}


def _one_step(module: ReconstructionModule, batch: dict) -> None:
    """One optimizer step through ``training_step``; the loss is finite and every trainable tensor moves."""
    optimizer = module.configure_optimizers()
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in trainable.values()}
    module.train()
    optimizer.zero_grad()
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    # Parameters without a gradient are either unused by MONAI (UNETR's norm_cross_attn) or have an exactly
    # zero one (a conv bias right before a batch norm); all others must move, and most parameters must.
    moved = {n for n, p in trainable.items() if not torch.equal(p, before[n])}
    has_grad = {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert has_grad <= moved, f"parameters with a gradient not updated: {sorted(has_grad - moved)[:5]}"
    n_moved = sum(trainable[n].numel() for n in moved)
    assert n_moved >= 0.95 * sum(p.numel() for p in trainable.values())
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)


@pytest.fixture
def quiet_log(monkeypatch):
    """``training_step`` logs; outside a Trainer that is a no-op with a warning."""
    monkeypatch.setattr(ReconstructionModule, "log", lambda *args, **kwargs: None)


@pytest.mark.parametrize("model", MODELS)
def test_one_training_step_of_every_model(model: str, tmp_path: Path, quiet_log) -> None:
    torch.manual_seed(0)
    module = _module(_compose(model, FAST, tmp_path, FAST_REDUCTIONS.get(model, [])))
    _one_step(module, _blob_batch(FAST, batch=2))
    if model == "tl_predictor":
        assert all(not p.requires_grad for p in module.net.decoder.parameters())


# ---------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("model", MODELS)
def test_one_step_at_the_reference_grid(model: str, size: int, tmp_path: Path, quiet_log) -> None:
    """Reference settings, batch 1 (OneDConcat: 2, its BatchNorm1d bottleneck needs two samples).

    SwinUNETR at 128³ runs with ``use_checkpoint=true`` (same computation, recomputed in the backward pass):
    without it one step needs about 8x the 2 GB measured at 64³, more than a small CPU machine has.
    """
    torch.manual_seed(0)
    extra = ["model.net.net.use_checkpoint=true"] if (model, size) == ("swinunetr", 128) else []
    module = _module(_compose(model, size, tmp_path, extra))
    _one_step(module, _blob_batch(size, batch=2 if model == "oned_concat" else 1))


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_train_then_evaluate_every_model(model: str, tmp_path: Path, embedded_small: Path) -> None:
    cfg = _compose(model, 64, tmp_path, ["debug=limit", "logger=csv"], embedded_small)
    metrics, _ = train.run(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0
    best = metrics["paths"]["best_checkpoint"]
    assert best and Path(best).is_file()

    model_overrides = [f"model={model}", "use_train_model=false", "data.grid_size=64", "logger=csv"]
    if model == "tl_predictor":
        model_overrides.append(f"model.net.autoencoder_ckpt={cfg.model.net.autoencoder_ckpt}")
    eval_cfg = compose_cfg("eval", [f"ckpt_path={best}", *model_overrides], tmp_path / "eval", embedded_small)
    eval_metrics, _ = evaluate.run(eval_cfg)
    assert eval_metrics["test/dice"] == pytest.approx(metrics["test/dice"], abs=1e-6)
