"""OneDConcat: each view encoded to a 1D vector, concatenated, fully connected bottleneck, 3D decoder.

Based on: Chen & Fang, "Using bi-planar X-ray images to reconstruct the spine structure by the
convolution neural network", International Conference on Biomedical and Health Informatics (ICBHI) 2019;
configuration as benchmarked by Shakya & Khanal 2023 (spec §3.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xray3d.models.nets.blocks import conv_stack

__all__ = ["OneDConcat"]


def _check_img_size(img_size: int, minimum: int, model: str) -> None:
    if not isinstance(img_size, int) or img_size < minimum or img_size & (img_size - 1):
        raise ValueError(f"{model} needs img_size to be a power of two >= {minimum}; got {img_size!r}")


class OneDConcat(nn.Module):
    """Chen & Fang 2019 two-view network (spec §3.4).

    Per view: 6 stride-2 conv blocks (kernel 3, channels 1->32->64->128->256->512->1024) and a flatten
    (``1024 * max(s/64, 1)**2`` features; 4096 at s=128, 1024 at s=64). The two vectors are concatenated and
    mapped by Linear -> BatchNorm1d -> ReLU to a 256-d code, read as a ``(B, 256, 1, 1, 1)`` cube, and
    decoded by ``log2(s)`` stride-2 transposed conv blocks (kernel 3; channels 1024, 512, ... halving, then
    1; the last block conv-only) to ``(B, 1, s, s, s)`` PIR logits.

    The fully connected bottleneck removes all spatial correspondence between the image pixels and the
    output voxels by design, so (unlike the other two-view models) there is no axis alignment to test.

    The reference's channel lists are given for s in {64, 128} (7 decoder blocks, ending ...64, 32, 1 at
    128; 6 ending ...64, 1 at 64); xray3d generalises them to any power of two ``s >= 16``.

    Args:
        img_size: side ``s`` of the square input images and of the output cube.
        dropout: dropout probability in every conv block (not in the bottleneck or the last layer).
        encoder_channels: output channels of the stride-2 encoder blocks.
        bottleneck_size: length of the fused code.
        decoder_top_channels: channels of the first decoder block; each next block halves them.
    """

    input_family = "two_view"

    def __init__(
        self,
        img_size: int = 128,
        dropout: float = 0.1,
        encoder_channels: Sequence[int] = (32, 64, 128, 256, 512, 1024),
        bottleneck_size: int = 256,
        decoder_top_channels: int = 1024,
    ) -> None:
        super().__init__()
        _check_img_size(img_size, 16, type(self).__name__)
        n_up = int(math.log2(img_size))
        if decoder_top_channels >> (n_up - 2) < 1:
            raise ValueError(
                f"decoder_top_channels={decoder_top_channels} is too small to halve {n_up - 2} times "
                f"for img_size {img_size}"
            )
        self.img_size = img_size
        self.bottleneck_size = bottleneck_size

        self.ap_encoder = self._encoder(encoder_channels, dropout)
        self.lat_encoder = self._encoder(encoder_channels, dropout)
        side = img_size
        for _ in encoder_channels:
            side = (side + 1) // 2  # stride 2, kernel 3, padding 1
        flat = encoder_channels[-1] * side * side
        self.bottleneck = nn.Sequential(
            nn.Linear(2 * flat, bottleneck_size), nn.BatchNorm1d(bottleneck_size), nn.ReLU()
        )
        channels = [decoder_top_channels >> k for k in range(n_up - 1)] + [1]
        self.decoder = conv_stack(
            3, bottleneck_size, channels, strides=2, dropout=dropout, transposed=True, last_conv_only=True
        )

    @staticmethod
    def _encoder(channels: Sequence[int], dropout: float) -> nn.Module:
        return nn.Sequential(*conv_stack(2, 1, channels, strides=2, dropout=dropout), nn.Flatten())

    def forward(self, ap: Tensor, lat: Tensor) -> Tensor:
        """Map ``ap`` (B,1,s,s) and ``lat`` (B,1,s,s) to ``(B, 1, s, s, s)`` logits.

        BatchNorm1d in the bottleneck needs a batch of at least 2 in training mode.
        """
        code = self.bottleneck(torch.cat([self.ap_encoder(ap), self.lat_encoder(lat)], dim=1))
        return self.decoder(code.view(-1, self.bottleneck_size, 1, 1, 1))
