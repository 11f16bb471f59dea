"""TwoDPermuteConcat: per-view 2D encoders, learned extrusion to 3D, channel concat, 3D decoder.

Based on: Bayat et al., "Inferring the 3D standing spine posture from 2D radiographs" (TransVert),
MICCAI 2020, arXiv 2007.06612; configuration as benchmarked by Shakya & Khanal 2023 (spec §3.3).
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from xray3d.models.nets.blocks import conv_stack

__all__ = ["TwoDPermuteConcat"]


def _check_img_size(img_size: int, minimum: int, model: str) -> None:
    """Raise ``ValueError`` unless ``img_size`` is a power of two ``>= minimum``.

    Args:
        img_size: side ``s`` of the input images and of the output cube.
        minimum: smallest side the architecture supports.
        model: class name used in the message.
    """
    if not isinstance(img_size, int) or img_size < minimum or img_size & (img_size - 1):
        raise ValueError(f"{model} needs img_size to be a power of two >= {minimum}; got {img_size!r}")


class TwoDPermuteConcat(nn.Module):
    """Bayat et al. 2020 two-view network (spec §3.3).

    Each view goes through its own 2D encoder (6 conv blocks, kernel 7, strides 2,2,1,1,1,1, channels
    1->16->32->...->32) to a ``(B, 32, s/4, s/4)`` map. The map is extruded into 3D by transposed 3D
    convolutions that grow only one new axis, ``log2(s) - 2`` times by 2: the AP map (axes I, R) is
    unsqueezed at P and grown along P; the LAT map (axes P, I) is unsqueezed at R and grown along R. The two
    ``(B, 32, s/4, s/4, s/4)`` PIR volumes are concatenated on channels and decoded by 7 transposed 3D
    convolutions (strides 1,1,1,1,2,2,1, the last kernel 7 and conv-only) to ``(B, 1, s, s, s)`` logits.

    The reference accepts only ``s`` in {64, 128}; the layer rule works for any power of two, so xray3d
    accepts any power of two ``>= 16`` (16 and 32 are used by fast tests only).

    Args:
        img_size: side ``s`` of the square input images and of the output cube.
        dropout: dropout probability in every conv block (the last decoder layer has none).
        encoder_channels: output channels of the 6 encoder blocks.
        encoder_strides: strides of the 6 encoder blocks (their product must be 4).
        encoder_kernel_size: encoder kernel size.
        expansion_channels: channels of the extrusion layers (= last encoder channels).
        decoder_channels: output channels of the 7 decoder layers.
        decoder_strides: strides of the decoder layers (their product must be 4).
        decoder_kernel_sizes: kernel sizes of the decoder layers.
    """

    input_family = "two_view"

    def __init__(
        self,
        img_size: int = 128,
        dropout: float = 0.1,
        encoder_channels: tuple[int, ...] = (16, 32, 32, 32, 32, 32),
        encoder_strides: tuple[int, ...] = (2, 2, 1, 1, 1, 1),
        encoder_kernel_size: int = 7,
        decoder_channels: tuple[int, ...] = (64, 64, 64, 64, 32, 16, 1),
        decoder_strides: tuple[int, ...] = (1, 1, 1, 1, 2, 2, 1),
        decoder_kernel_sizes: tuple[int, ...] = (3, 3, 3, 3, 3, 3, 7),
    ) -> None:
        super().__init__()
        _check_img_size(img_size, 16, type(self).__name__)
        if len(encoder_channels) != len(encoder_strides) or math.prod(encoder_strides) != 4:
            raise ValueError("encoder_channels and encoder_strides must have equal length, strides product 4")
        if (
            len({len(decoder_channels), len(decoder_strides), len(decoder_kernel_sizes)}) != 1
            or math.prod(decoder_strides) != 4
            or decoder_channels[-1] != 1
        ):
            raise ValueError(
                "decoder_channels, decoder_strides and decoder_kernel_sizes must have equal length, "
                "strides product 4 and 1 final channel"
            )
        self.img_size = img_size
        depth = int(math.log2(img_size)) - 2
        feat = encoder_channels[-1]

        self.ap_encoder = self._encoder(encoder_channels, encoder_strides, encoder_kernel_size, dropout)
        self.lat_encoder = self._encoder(encoder_channels, encoder_strides, encoder_kernel_size, dropout)
        # AP (I, R) -> grow axis 0 (P); LAT (P, I) -> grow axis 2 (R).
        self.ap_expansion = self._expansion(feat, depth, (2, 1, 1), dropout)
        self.lat_expansion = self._expansion(feat, depth, (1, 1, 2), dropout)

        self.decoder = conv_stack(
            3,
            2 * feat,
            decoder_channels,
            strides=decoder_strides,
            kernel_sizes=decoder_kernel_sizes,
            dropout=dropout,
            transposed=True,
            last_conv_only=True,
        )

    @staticmethod
    def _encoder(
        channels: tuple[int, ...], strides: tuple[int, ...], kernel: int, dropout: float
    ) -> nn.Module:
        return conv_stack(2, 1, channels, strides=strides, kernel_sizes=kernel, dropout=dropout)

    @staticmethod
    def _expansion(channels: int, depth: int, stride: tuple[int, int, int], dropout: float) -> nn.Module:
        return nn.Sequential(
            *[
                Convolution(
                    spatial_dims=3,
                    in_channels=channels,
                    out_channels=channels,
                    strides=stride,
                    kernel_size=3,
                    is_transposed=True,
                    act="RELU",
                    norm="BATCH",
                    dropout=dropout,
                )
                for _ in range(depth)
            ]
        )

    def forward(self, ap: Tensor, lat: Tensor) -> Tensor:
        """Map ``ap`` (B,1,s,s; I,R) and ``lat`` (B,1,s,s; P,I) to ``(B, 1, s, s, s)`` PIR logits."""
        ap_vol = self.ap_expansion(self.ap_encoder(ap).unsqueeze(2))  # (B,C,1,I,R) -> (B,C,P,I,R)
        lat_vol = self.lat_expansion(self.lat_encoder(lat).unsqueeze(-1))  # (B,C,P,I,1) -> (B,C,P,I,R)
        return self.decoder(torch.cat([ap_vol, lat_vol], dim=1))
