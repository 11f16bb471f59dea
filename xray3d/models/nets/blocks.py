"""Shared building blocks of the benchmark architectures (MONAI ``Convolution`` stacks)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["conv_stack"]


def _per_layer(value: int | Sequence[int], n: int, name: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} needs one entry per layer ({n}), got {values}")
    return values


def conv_stack(
    spatial_dims: int,
    in_channels: int,
    channels: Sequence[int],
    strides: int | Sequence[int] = 1,
    kernel_sizes: int | Sequence[int] = 3,
    norm: str = "BATCH",
    dropout: float | None = 0.1,
    transposed: bool = False,
    last_conv_only: bool = False,
) -> nn.Sequential:
    """A chain of MONAI conv blocks (conv -> norm -> dropout -> ReLU), one per entry of ``channels``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels entering the first block.
        channels: output channels of each block.
        strides: one stride for all blocks or one per block.
        kernel_sizes: one kernel size for all blocks or one per block.
        norm: MONAI norm name.
        dropout: dropout probability of each block.
        transposed: transposed convolutions (``output_padding = stride - 1``, so each stride-2 block doubles
            the grid).
        last_conv_only: the last block is a bare convolution (no norm, dropout or activation), as in the
            output layers of the reference decoders.
    """
    n = len(channels)
    strides_l = _per_layer(strides, n, "strides")
    kernels_l = _per_layer(kernel_sizes, n, "kernel_sizes")
    layers = []
    in_ch = in_channels
    for k, (out_ch, stride, kernel) in enumerate(zip(channels, strides_l, kernels_l, strict=True)):
        last = last_conv_only and k == n - 1
        layers.append(
            Convolution(
                spatial_dims=spatial_dims,
                in_channels=in_ch,
                out_channels=out_ch,
                strides=stride,
                kernel_size=kernel,
                is_transposed=transposed,
                act="RELU",
                norm=norm,
                dropout=None if last else dropout,
                conv_only=last,
            )
        )
        in_ch = out_ch
    return nn.Sequential(*layers)
