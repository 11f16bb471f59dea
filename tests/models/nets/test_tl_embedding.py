"""TL-embedding (spec §3.6): autoencoder and predictor shapes, parameter counts, checkpoint loading, freezing.

The predictor's code is a single 64-d vector (flatten + Linear), so, like OneDConcat, it has no spatial
correspondence between the views and the output; its input lift is ``lift_to_volume`` (tested with the
adapters). No axis test here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from xray3d.models.nets.tl_embedding import TLAutoEncoder, TLPredictor, load_autoencoder

S = 32  # smallest valid size, for fast tests
# spec §3.1: predictor 2.17M / 0.34M and autoencoder 4.37M / 0.67M at s = 128 / 64.
AE_PARAMS = {64: (674_209, 0.67e6), 128: (4_372_897, 4.37e6)}
PREDICTOR_PARAMS = {64: (335_336, 0.34e6), 128: (2_170_344, 2.17e6)}


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _save_lightning_style(ae: TLAutoEncoder, path: Path) -> None:
    state = {f"net.{k}": v for k, v in ae.state_dict().items()}
    state["loss_fn.dummy"] = torch.zeros(1)  # non-network entries of a LightningModule are ignored
    torch.save({"state_dict": state, "epoch": 3, "global_step": 5000, "hyper_parameters": {"lr": 2e-4}}, path)


def _decoder_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_autoencoder_shapes() -> None:
    ae = TLAutoEncoder(img_size=S).train()
    mask = (torch.rand(2, 1, S, S, S) > 0.5).float()
    z = ae.encode(mask)
    assert z.shape == (2, 64)
    assert ae.decode(z).shape == (2, 1, S, S, S)
    out = ae(mask)
    assert out.shape == (2, 1, S, S, S)
    out.mean().backward()
    assert TLAutoEncoder.input_family == "mask"


def test_predictor_shapes_and_frozen_decoder() -> None:
    model = TLPredictor(img_size=S).train()
    assert not model.decoder.training  # the frozen decoder stays in eval mode
    assert all(not p.requires_grad for p in model.decoder.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for n, p in model.named_parameters() if not n.startswith("decoder.")}
    out = model(torch.rand(2, 1, S, S), torch.rand(2, 1, S, S))
    assert out.shape == (2, 1, S, S, S)
    out.mean().backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert model.predict_latent(torch.rand(2, 1, S, S), torch.rand(2, 1, S, S)).shape == (2, 64)
    assert TLPredictor.input_family == "volume"


@pytest.mark.parametrize("s", [64, 128])
def test_parameter_counts(s: int) -> None:
    ae = TLAutoEncoder(img_size=s)
    exact, spec = AE_PARAMS[s]
    assert _count(ae.parameters()) == exact
    assert exact == pytest.approx(spec, rel=0.05)

    predictor = TLPredictor(img_size=s)
    exact, spec = PREDICTOR_PARAMS[s]
    assert _count(predictor.trainable_parameters()) == exact
    assert exact == pytest.approx(spec, rel=0.05)
    # all parameters = the predictor's own + the (frozen) autoencoder decoder
    assert _count(predictor.parameters()) == exact + _count(ae.decoder.parameters())


def test_layer_configuration() -> None:
    ae = TLAutoEncoder(img_size=64)
    enc = [m for m in ae.encoder.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in enc] == [8, 16, 32, 64] and {c.stride for c in enc} == {(2, 2, 2)}
    assert any(isinstance(m, nn.InstanceNorm3d) for m in ae.encoder.modules())
    assert ae.to_latent[1].in_features == 64 * 4**3 and ae.to_latent[1].out_features == 64
    dec = [m for m in ae.decoder.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [c.out_channels for c in dec] == [32, 16, 8, 1]
    assert len(ae.decoder.convs[-1]) == 1  # conv-only
    assert {m.p for m in ae.modules() if isinstance(m, nn.Dropout)} == {0.1}
    predictor = TLPredictor(img_size=64, dropout=0.2)
    enc = [m for m in predictor.encoder.modules() if isinstance(m, nn.Conv3d)]
    assert enc[0].in_channels == 2 and [c.out_channels for c in enc] == [8, 16, 32, 64]
    assert {m.p for m in predictor.encoder.modules() if isinstance(m, nn.Dropout)} == {0.2}


@pytest.mark.parametrize("style", ["lightning", "plain"])
def test_predictor_loads_autoencoder(tmp_path: Path, style: str) -> None:
    ae = TLAutoEncoder(img_size=S)
    path = tmp_path / ("last.ckpt" if style == "lightning" else "ae.pt")
    if style == "lightning":
        _save_lightning_style(ae, path)
    else:
        torch.save(ae.state_dict(), path)
    model = TLPredictor(img_size=S, autoencoder_ckpt=str(path))
    assert _decoder_equal(model.decoder, ae.decoder)
    assert not _decoder_equal(TLPredictor(img_size=S).decoder, ae.decoder)
    assert all(not p.requires_grad for p in model.decoder.parameters())
    # load_autoencoder also restores a standalone autoencoder
    assert _decoder_equal(load_autoencoder(path, TLAutoEncoder(img_size=S)), ae)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match=r"nope.*run stage 1 first.*experiment=tl_embedding/stage1"):
        TLPredictor(img_size=S, autoencoder_ckpt=str(path))


@pytest.mark.parametrize("other", [{"img_size": 64}, {"latent_dim": 32}, {"channels": (8, 16, 32, 32)}])
def test_mismatched_checkpoint_is_a_clear_error(tmp_path: Path, other: dict) -> None:
    path = tmp_path / "last.ckpt"
    _save_lightning_style(TLAutoEncoder(**{"img_size": S, **other}), path)
    with pytest.raises(ValueError, match=r"last\.ckpt does not match TLAutoEncoder.*stage1_autoencoder"):
        TLPredictor(img_size=S, autoencoder_ckpt=str(path))


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.ckpt.*stage1_autoencoder"):
        TLPredictor(img_size=S, autoencoder_ckpt=str(garbage))
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_dict)
    with pytest.raises(ValueError, match=r"no state dict"):
        TLPredictor(img_size=S, autoencoder_ckpt=str(not_a_dict))


@pytest.mark.parametrize("s", [0, 16, 24, 40, 100])
def test_rejects_bad_img_size(s: int) -> None:
    for cls in (TLAutoEncoder, TLPredictor):
        with pytest.raises(ValueError, match="divisible by 16 and >= 32"):
            cls(img_size=s)


def test_training_without_a_stage1_checkpoint_is_refused_when_required() -> None:
    model = TLPredictor(img_size=32, require_autoencoder=True)
    model.eval()  # building and evaluating are fine
    with pytest.raises(ValueError, match="no stage-1 autoencoder.*run stage 1 first"):
        model.train()
