"""Two-stage "TL-embedding" network: a shape autoencoder, then a predictor of its latent code.

Based on: Girdhar et al., "Learning a Predictable and Generative Vector Representation for Objects",
ECCV 2016, arXiv 1603.08637; configuration as benchmarked by Shakya & Khanal 2023 (spec §3.6).

Stage 1 trains :class:`TLAutoEncoder` as a denoising autoencoder of segmentation masks. Stage 2 trains
:class:`TLPredictor`, which maps the two views (lifted to a volume) to the 64-d latent code and decodes it
with the stage-1 decoder, frozen; its loss is computed on the decoded logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from xray3d.models.adapters import lift_to_volume
from xray3d.models.nets.blocks import conv_stack

__all__ = ["LatentDecoder", "TLAutoEncoder", "TLPredictor", "load_autoencoder"]

_STAGE1_HINT = (
    "run stage 1 first (python -m xray3d.pipeline.two_stage runs both stages; "
    "or python train.py experiment=tl_embedding/stage1_autoencoder)"
)


def _check_img_size(img_size: int, model: str) -> None:
    if not isinstance(img_size, int) or img_size < 32 or img_size % 16:
        raise ValueError(
            f"{model} needs img_size divisible by 16 and >= 32 (4 stride-2 convs must leave more than one "
            f"voxel for instance norm); got {img_size!r}"
        )


def _conv_encoder(in_channels: int, channels: Sequence[int], dropout: float, norm: str) -> nn.Sequential:
    """Stride-2 3D conv blocks (conv -> norm -> dropout -> ReLU), one per entry of ``channels``."""
    return conv_stack(3, in_channels, channels, strides=2, norm=norm, dropout=dropout)


class LatentDecoder(nn.Module):
    """Latent code -> mask logits: Linear, reshape to ``(C, s/16, s/16, s/16)``, transposed conv blocks.

    The conv path is MONAI ``AutoEncoder``'s decode path without residual units: stride-2 transposed
    convs through ``reversed(channels[:-1])`` and then 1 channel, the last conv-only.

    Args:
        img_size: side ``s`` of the output cube.
        latent_dim: length of the code.
        channels: encoder channels of the autoencoder.
        dropout: dropout probability of the conv blocks.
        norm: MONAI norm name of the conv blocks.
    """

    def __init__(
        self, img_size: int, latent_dim: int, channels: Sequence[int], dropout: float, norm: str
    ) -> None:
        super().__init__()
        side = img_size >> len(channels)
        self.grid = (channels[-1], side, side, side)
        self.fc = nn.Linear(latent_dim, math.prod(self.grid))
        outs = [*reversed(channels[:-1]), 1]
        self.convs = conv_stack(
            3, channels[-1], outs, strides=2, norm=norm, dropout=dropout, transposed=True, last_conv_only=True
        )

    def forward(self, z: Tensor) -> Tensor:
        """``(B, latent_dim)`` code -> ``(B, 1, s, s, s)`` logits."""
        return self.convs(self.fc(z).view(-1, *self.grid))


class TLAutoEncoder(nn.Module):
    """Stage 1 of TL-embedding: mask autoencoder with a 1D latent (the reference's ``CustomAutoEncoder``).

    Encoder: 4 stride-2 3D conv blocks (channels 8, 16, 32, 64; instance norm, dropout, ReLU), flatten and
    Linear to a 64-d code. Decoder: :class:`LatentDecoder`. Weights use the reference initialisation:
    conv weights ~ N(0, 2 / fan_out), linear weights ~ U(+-1 / sqrt(fan_out)), biases 0 (transposed convs
    keep PyTorch's default). Trained as a denoiser (noisy mask in, clean mask target; spec §3.6).

    Args:
        img_size: side ``s`` of the mask cube; divisible by 16 and >= 32.
        latent_dim: length of the code.
        channels: encoder channels (each block halves the grid).
        dropout: dropout probability of the conv blocks.
        norm: MONAI norm name of the conv blocks.
    """

    input_family = "mask"

    def __init__(
        self,
        img_size: int = 128,
        latent_dim: int = 64,
        channels: Sequence[int] = (8, 16, 32, 64),
        dropout: float = 0.1,
        norm: str = "INSTANCE",
    ) -> None:
        super().__init__()
        _check_img_size(img_size, type(self).__name__)
        if len(channels) != 4:
            raise ValueError(f"channels needs 4 entries (s -> s/16); got {list(channels)}")
        self.img_size = img_size
        self.latent_dim = latent_dim
        self.encoder = _conv_encoder(1, channels, dropout, norm)
        side = img_size >> len(channels)
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side**3, latent_dim))
        self.decoder = LatentDecoder(img_size, latent_dim, channels, dropout, norm)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                fan_out = m.out_channels * math.prod(m.kernel_size)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def encode(self, mask: Tensor) -> Tensor:
        """``(B, 1, s, s, s)`` mask -> ``(B, latent_dim)`` code."""
        return self.to_latent(self.encoder(mask))

    def decode(self, z: Tensor) -> Tensor:
        """``(B, latent_dim)`` code -> ``(B, 1, s, s, s)`` logits."""
        return self.decoder(z)

    def forward(self, mask: Tensor) -> Tensor:
        """Reconstruct ``(B, 1, s, s, s)`` mask logits from a (noisy) mask of the same shape."""
        return self.decode(self.encode(mask))


def load_autoencoder(path: str | Path, autoencoder: TLAutoEncoder) -> TLAutoEncoder:
    """Load stage-1 weights into ``autoencoder`` (strictly) and return it.

    Args:
        path: a Lightning checkpoint (a dict with ``"state_dict"`` whose network keys start with ``"net."``;
            other keys are ignored) or a plain ``state_dict`` saved with ``torch.save``.
        autoencoder: a :class:`TLAutoEncoder` built with the stage-1 hyper-parameters.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: if the file cannot be read as a state dict or does not match ``autoencoder``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TL-embedding autoencoder checkpoint {path} not found: {_STAGE1_HINT}")
    try:
        # A trusted local file written by stage 1; Lightning checkpoints hold more than tensors.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any unpickling failure means "not a checkpoint"
        raise ValueError(f"cannot read autoencoder checkpoint {path} ({err}); {_STAGE1_HINT}") from err
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds no state dict ({type(obj).__name__}); {_STAGE1_HINT}")
    if any(k.startswith("net.") for k in state):
        state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    try:
        autoencoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"the state dict in {path} does not match TLAutoEncoder(img_size={autoencoder.img_size}, "
            f"latent_dim={autoencoder.latent_dim}, ...): use the stage-1 hyper-parameters, or "
            f"{_STAGE1_HINT}.\n{err}"
        ) from err
    return autoencoder


class TLPredictor(nn.Module):
    """Stage 2 of TL-embedding: two views -> latent code -> frozen stage-1 decoder (spec §3.6).

    The views are lifted to a ``(B, 2, s, s, s)`` volume (:func:`~xray3d.models.adapters.lift_to_volume`),
    encoded by 4 stride-2 3D conv blocks (channels 8, 16, 32, 64; instance norm, dropout, ReLU), flattened
    and mapped by a Linear to the 64-d code, which the stage-1 :class:`LatentDecoder` turns into
    ``(B, 1, s, s, s)`` logits. The decoder's parameters have ``requires_grad=False`` (see
    :meth:`trainable_parameters`) and it is kept in eval mode, so its dropout is off (xray3d's reading of
    "frozen").

    Args:
        img_size: side ``s``; divisible by 16 and >= 32; must equal the autoencoder's.
        autoencoder_ckpt: stage-1 checkpoint (see :func:`load_autoencoder`). ``None`` leaves the decoder
            randomly initialised, which is only meant for restoring a whole stage-2 checkpoint (it holds
            the decoder weights too) and for tests.
        latent_dim: length of the code; must equal the autoencoder's.
        channels: channels of the predictor's conv blocks.
        ae_channels: encoder channels of the stage-1 autoencoder.
        dropout: dropout probability of the predictor's conv blocks.
        norm: MONAI norm name of the conv blocks (autoencoder and predictor).
        require_autoencoder: refuse to *train* without a stage-1 checkpoint (a random frozen decoder
            would train silently to nothing); building and evaluating still work.

    Raises:
        FileNotFoundError: if ``autoencoder_ckpt`` is given but missing.
        ValueError: if ``img_size`` is invalid or the checkpoint does not match.
    """

    input_family = "volume"

    def __init__(
        self,
        img_size: int = 128,
        autoencoder_ckpt: str | None = None,
        latent_dim: int = 64,
        channels: Sequence[int] = (8, 16, 32, 64),
        ae_channels: Sequence[int] = (8, 16, 32, 64),
        dropout: float = 0.1,
        norm: str = "INSTANCE",
        require_autoencoder: bool = False,
    ) -> None:
        super().__init__()
        _check_img_size(img_size, type(self).__name__)
        if len(channels) != 4:
            raise ValueError(f"channels needs 4 entries (s -> s/16); got {list(channels)}")
        self.img_size = img_size
        self.has_autoencoder = autoencoder_ckpt is not None
        self.require_autoencoder = require_autoencoder
        autoencoder = TLAutoEncoder(img_size, latent_dim, ae_channels, dropout, norm)
        if autoencoder_ckpt is not None:
            load_autoencoder(autoencoder_ckpt, autoencoder)
        self.encoder = _conv_encoder(2, channels, dropout, norm)
        side = img_size >> len(channels)
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side**3, latent_dim))
        self.decoder = autoencoder.decoder
        self.decoder.requires_grad_(False)
        self.decoder.eval()

    def check_trainable(self) -> None:
        """Called by the LightningModule before fitting (``setup("fit")``), since Lightning does not call
        :meth:`train` at the start of a fit.

        Raises:
            ValueError: without a stage-1 autoencoder when ``require_autoencoder`` is set.
        """
        if self.require_autoencoder and not self.has_autoencoder:
            raise ValueError(
                "TLPredictor has no stage-1 autoencoder (model.net.autoencoder_ckpt is null): " + _STAGE1_HINT
            )

    def train(self, mode: bool = True) -> TLPredictor:
        """Set train/eval mode; the frozen decoder always stays in eval mode.

        Raises:
            ValueError: when training is requested without a stage-1 autoencoder and
                ``require_autoencoder`` is set.
        """
        if mode:
            self.check_trainable()
        super().train(mode)
        self.decoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The predictor's own parameters (everything but the frozen decoder)."""
        return [p for p in self.parameters() if p.requires_grad]

    def predict_latent(self, ap: Tensor, lat: Tensor) -> Tensor:
        """``(B, latent_dim)`` code predicted from ``ap`` (B,1,s,s; I,R) and ``lat`` (B,1,s,s; P,I)."""
        return self.to_latent(self.encoder(lift_to_volume(ap, lat)))

    def forward(self, ap: Tensor, lat: Tensor) -> Tensor:
        """Map ``ap`` and ``lat`` to ``(B, 1, s, s, s)`` PIR logits through the frozen decoder."""
        return self.decoder(self.predict_latent(ap, lat))
