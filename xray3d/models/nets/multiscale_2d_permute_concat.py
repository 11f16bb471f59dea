"""MultiScale2DPermuteConcat: DenseNet 2D pyramids per view, channel-as-depth fusion at every scale.

Based on: Buttongkum et al., "3D reconstruction of proximal femoral fracture from biplanar radiographs
with fractural representative learning", Scientific Reports 13:455 (2023), doi:10.1038/s41598-023-27607-2;
configuration as benchmarked by Shakya & Khanal 2023 (spec §3.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

__all__ = ["MultiScale2DPermuteConcat"]

_COARSEST = 4  # side of the coarsest pyramid level


def _check_img_size(img_size: int, minimum: int, model: str) -> None:
    if not isinstance(img_size, int) or img_size < minimum or img_size & (img_size - 1):
        raise ValueError(f"{model} needs img_size to be a power of two >= {minimum}; got {img_size!r}")


def _conv(
    dims: int,
    in_ch: int,
    out_ch: int,
    dropout: float | None = None,
    transposed: bool = False,
    kernel: int = 3,
) -> Convolution:
    """Conv (stride 2 if transposed, else 1) -> BatchNorm -> [Dropout] -> ReLU."""
    return Convolution(
        spatial_dims=dims,
        in_channels=in_ch,
        out_channels=out_ch,
        strides=2 if transposed else 1,
        kernel_size=kernel,
        is_transposed=transposed,
        act="RELU",
        norm="BATCH",
        dropout=dropout,
    )


class _DenseBlock(nn.Module):
    """``layers`` 3x3 conv blocks, each fed the concatenation of the block input and all earlier outputs."""

    def __init__(self, in_ch: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_conv(2, in_ch + k * growth, growth) for k in range(layers)])
        self.out_channels = in_ch + layers * growth

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _PyramidEncoder(nn.Module):
    """Stem conv, then dense blocks separated by 2x2 max-pooling; returns the pyramid coarse-first."""

    def __init__(self, stem_channels: int, growth_rates: Sequence[int], layers: int) -> None:
        super().__init__()
        self.stem = _conv(2, 1, stem_channels)
        blocks = []
        ch = stem_channels
        for g in growth_rates:
            blocks.append(_DenseBlock(ch, g, layers))
            ch = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)
        self.out_channels = [b.out_channels for b in reversed(blocks)]  # coarse-first

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for k, block in enumerate(self.blocks):
            if k:
                x = self.pool(x)
            x = block(x)
            feats.append(x)
        return feats[::-1]


class _PyramidDecoder(nn.Module):
    """Coarse-to-fine 2D decoder whose output at a scale of side ``d`` has ``d`` channels."""

    def __init__(self, enc_channels: Sequence[int], sides: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.ups = nn.ModuleList([_conv(2, d, d, transposed=True) for d in sides[:-1]])
        in_chs = [enc_channels[0]] + [e + d for e, d in zip(enc_channels[1:], sides[:-1], strict=True)]
        self.convs = nn.ModuleList([_conv(2, c, d, dropout) for c, d in zip(in_chs, sides, strict=True)])

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        outs = [self.convs[0](feats[0])]
        for up, conv, feat in zip(self.ups, self.convs[1:], feats[1:], strict=True):
            outs.append(conv(torch.cat([up(outs[-1]), feat], dim=1)))
        return outs


class MultiScale2DPermuteConcat(nn.Module):
    """Buttongkum et al. 2023 (FracReconNet-style) two-view network (spec §3.5).

    Per view: a stem conv (1->16, no dropout) and ``log2(s) - 1`` DenseNet blocks (4 convs each, growth
    ``64 / 2**k`` counted from the coarsest block, i.e. [2,4,8,16,32,64] at s=128 and [4,8,16,32,64] at
    s=64) separated by max-pooling build a feature pyramid from ``s`` down to 4. A 2D decoder runs from the
    coarsest scale to the finest; at a scale of side ``d`` it outputs ``d`` channels, so each decoded map
    ``(B, d, d, d)`` can be read as a one-channel cube. At every scale the AP cube, the LAT cube and the
    upsampled previous fused volume (32 channels) are concatenated and fused by a 3D conv block; a 1x1x1
    conv head gives ``(B, 1, s, s, s)`` PIR logits.

    Axis mapping (where xray3d differs from the reference):

    * AP map ``(B, d, I, R)``: its channels become the P axis, ``ap.unsqueeze(1)`` -> ``(B, 1, P, I, R)``,
      as in the reference.
    * LAT map ``(B, d, P, I)``: its channels must become the R axis, so xray3d moves the channel axis to the
      end, ``lat.movedim(1, -1).unsqueeze(1)`` -> ``(B, 1, P, I, R)``. The reference uses
      ``lat.transpose(1, -1)``, which gives ``(B, I, P, R)``: the LAT image's P and I axes land on the
      volume's I and P axes, misaligned with the AP cube and the PIR target (spec §3.5, §9 item 10). As the
      3D convolutions are local they cannot undo that transpose, so xray3d fixes it; the alignment is
      tested in ``tests/models/nets/test_multiscale_2d_permute_concat.py``.
    * The reference builds 8 (3D) and 5 (2D) transposed-conv upsamplers regardless of ``s`` and uses only
      those it needs; the unused ones still count in its parameter totals (3.16M at s=128, 2.84M at s=64,
      spec §3.1). xray3d builds only the layers it uses: 3.08M at s=128 and 2.65M at s=64.

    Args:
        img_size: side ``s`` of the square input images and of the output cube; a power of two >= 16.
        dropout: dropout probability of the 2D decoder and 3D fusion conv blocks (the encoder has none).
        stem_channels: output channels of the first encoder conv.
        growth_rates: DenseNet growth per block, fine-to-coarse; default ``64 / 2**k`` as described above.
        dense_layers: convs per DenseNet block.
        fusion_channels: channels of the fused 3D volume.
    """

    input_family = "two_view"

    def __init__(
        self,
        img_size: int = 128,
        dropout: float = 0.1,
        stem_channels: int = 16,
        growth_rates: Sequence[int] | None = None,
        dense_layers: int = 4,
        fusion_channels: int = 32,
    ) -> None:
        super().__init__()
        _check_img_size(img_size, 16, type(self).__name__)
        n_scales = int(math.log2(img_size // _COARSEST)) + 1
        if growth_rates is None:
            growth_rates = [64 >> (n_scales - 1 - k) for k in range(n_scales)]
        if len(growth_rates) != n_scales:
            raise ValueError(
                f"growth_rates needs one entry per pyramid level ({n_scales} for img_size {img_size}, "
                f"from {img_size} down to {_COARSEST}); got {list(growth_rates)}"
            )
        self.img_size = img_size
        sides = [_COARSEST << k for k in range(n_scales)]  # coarse-first: 4, 8, ..., s

        self.ap_encoder = _PyramidEncoder(stem_channels, growth_rates, dense_layers)
        self.lat_encoder = _PyramidEncoder(stem_channels, growth_rates, dense_layers)
        enc_channels = self.ap_encoder.out_channels
        self.ap_decoder = _PyramidDecoder(enc_channels, sides, dropout)
        self.lat_decoder = _PyramidDecoder(enc_channels, sides, dropout)

        self.fusion_ups = nn.ModuleList(
            [_conv(3, fusion_channels, fusion_channels, transposed=True) for _ in sides[:-1]]
        )
        self.fusion_convs = nn.ModuleList(
            [_conv(3, 2 + (k > 0) * fusion_channels, fusion_channels, dropout) for k in range(n_scales)]
        )
        self.head = Convolution(
            spatial_dims=3, in_channels=fusion_channels, out_channels=1, kernel_size=1, conv_only=True
        )

    @staticmethod
    def ap_to_volume(ap_map: Tensor) -> Tensor:
        """``(B, d, I, R)`` AP map -> ``(B, 1, P, I, R)`` cube (channels become P)."""
        return ap_map.unsqueeze(1)

    @staticmethod
    def lat_to_volume(lat_map: Tensor) -> Tensor:
        """``(B, d, P, I)`` LAT map -> ``(B, 1, P, I, R)`` cube (channels become R)."""
        return lat_map.movedim(1, -1).unsqueeze(1)

    def forward(self, ap: Tensor, lat: Tensor) -> Tensor:
        """Map ``ap`` (B,1,s,s; I,R) and ``lat`` (B,1,s,s; P,I) to ``(B, 1, s, s, s)`` PIR logits."""
        ap_maps = self.ap_decoder(self.ap_encoder(ap))
        lat_maps = self.lat_decoder(self.lat_encoder(lat))
        fused: Tensor | None = None
        for k, (ap_map, lat_map) in enumerate(zip(ap_maps, lat_maps, strict=True)):
            views = [self.ap_to_volume(ap_map), self.lat_to_volume(lat_map)]
            if fused is not None:
                views.insert(0, self.fusion_ups[k - 1](fused))
            fused = self.fusion_convs[k](torch.cat(views, dim=1))
        return self.head(fused)
