"""MONAI volume-input networks: reference parameter counts (spec §3.1), argument checks, forward shapes."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from torch import nn

from xray3d.models.adapters import VolumeAsInput
from xray3d.models.nets.monai_nets import swin_unetr, unetr

from ...conftest import compose_cfg

S = 32  # smallest grid SwinUNETR accepts (with batch norm; instance norm needs 64)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "model, size, spec_millions",
    [
        ("swinunetr", 64, 62.19),
        ("swinunetr", 128, 62.19),
        ("unetr", 64, 95.81),
        ("unetr", 128, 96.16),
        ("attention_unet", 64, 1.48),
        ("unet", 64, 1.20),
    ],
)
def test_parameter_counts_of_the_model_configs(
    model: str, size: int, spec_millions: float, tmp_path: Path
) -> None:
    """The ``net`` node of ``conf/model/<model>.yaml`` at grid ``size``: spec §3.1 count within 5%."""
    cfg = compose_cfg("train", [f"model={model}", f"data.grid_size={size}"], tmp_path)
    net = hydra.utils.instantiate(cfg.model.net)
    assert isinstance(net, VolumeAsInput)
    assert _count(net) == pytest.approx(spec_millions * 1e6, rel=0.05)


def test_swin_unetr_forward_shape() -> None:
    """Reduced width (feature_size 12) and batch norm (instance norm needs a grid >= 64) to stay fast."""
    torch.manual_seed(0)
    model = VolumeAsInput(swin_unetr(S, feature_size=12, norm_name="batch")).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, S, S), torch.rand(1, 1, S, S))
    assert out.shape == (1, 1, S, S, S) and torch.isfinite(out).all()


def test_unetr_forward_shape_and_fixed_size() -> None:
    """Reduced transformer (hidden 96, 3 heads, mlp 192) to stay fast."""
    torch.manual_seed(0)
    model = VolumeAsInput(unetr(S, feature_size=8, hidden_size=96, mlp_dim=192, num_heads=3)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, S, S), torch.rand(1, 1, S, S))
        assert out.shape == (1, 1, S, S, S) and torch.isfinite(out).all()
        with pytest.raises((RuntimeError, ValueError)):  # the model only accepts its img_size
            model(torch.rand(1, 1, 2 * S, 2 * S), torch.rand(1, 1, 2 * S, 2 * S))


def test_reference_defaults() -> None:
    """Factory defaults are the spec §3.2 settings (dropout 0.1 everywhere)."""
    swin = swin_unetr(64)
    assert tuple(swin.swinViT.patch_size) == (2, 2, 2) and swin.swinViT.embed_dim == 48
    assert swin.swinViT.pos_drop.p == pytest.approx(0.1) and swin.normalize
    net = unetr(64)
    assert net.hidden_size == 768 and tuple(net.feat_size) == (4, 4, 4)
    assert len(net.vit.blocks) == 12 and net.vit.blocks[0].attn.num_heads == 12
    assert net.vit.patch_embedding.dropout.p == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"img_size": 48}, "multiple of 32"),
        ({"img_size": 32}, "at least 64"),
        ({"img_size": 100}, "multiple of 32"),
        ({"img_size": 0}, "positive"),
        ({"img_size": 64, "feature_size": 20}, "multiple of 12"),
        ({"img_size": 64, "feature_size": 12, "num_heads": (5, 6, 12, 24)}, "divisible by num_heads"),
        ({"img_size": 64, "depths": (2, 2, 2)}, "4 entries"),
        ({"img_size": 64, "drop_rate": 1.5}, "drop_rate"),
    ],
)
def test_swin_unetr_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        swin_unetr(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"img_size": 40}, "divisible by the patch size 16"),
        ({"img_size": (64, 64, 40)}, "only accepts inputs of exactly that size"),
        ({"img_size": 64, "hidden_size": 100}, "hidden_size must be divisible by num_heads"),
        ({"img_size": 64, "dropout_rate": -0.1}, "dropout_rate"),
    ],
)
def test_unetr_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unetr(**kwargs)


def test_config_grid_is_checked_when_the_model_is_built(tmp_path: Path) -> None:
    cfg = compose_cfg("train", ["model=swinunetr", "data.grid_size=48"], tmp_path)
    with pytest.raises(Exception, match="multiple of 32"):
        hydra.utils.instantiate(cfg.model.net)
