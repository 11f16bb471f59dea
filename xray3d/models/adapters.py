"""Input adapters: every xray3d network is called as ``net(ap, lat) -> logits``.

Shapes: ``ap`` and ``lat`` are ``(B, 1, s, s)`` with axes AP = (I, R) and LAT = (P, I) (see
:mod:`xray3d.data.projection`); logits are ``(B, 1, s, s, s)`` in PIR order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["VolumeAsInput", "lift_to_volume"]


def lift_to_volume(ap: Tensor, lat: Tensor) -> Tensor:
    """Back-project by repetition (the reference's "kasten" lift, spec §2.7).

    Args:
        ap: ``(B, 1, s, s)`` AP image, axes (I, R).
        lat: ``(B, 1, s, s)`` LAT image, axes (P, I).

    Returns:
        ``(B, 2, s, s, s)`` PIR volume: channel 0 = AP repeated along P, channel 1 = LAT repeated along R.
    """
    if ap.shape != lat.shape or ap.ndim != 4 or ap.shape[1] != 1 or ap.shape[-1] != ap.shape[-2]:
        raise ValueError(
            f"ap and lat must both be (B, 1, s, s); got {tuple(ap.shape)} and {tuple(lat.shape)}"
        )
    s = ap.shape[-1]
    ap_vol = ap.unsqueeze(2).expand(-1, -1, s, -1, -1)  # (B,1,P,I,R)
    lat_vol = lat.unsqueeze(-1).expand(-1, -1, -1, -1, s)  # (B,1,P,I,R)
    return torch.cat([ap_vol, lat_vol], dim=1)


class VolumeAsInput(nn.Module):
    """Wrap a 3D network with 2 input channels so it takes ``(ap, lat)`` like the two-view models.

    Args:
        net: any 3D network mapping ``(B, 2, s, s, s)`` to ``(B, 1, s, s, s)`` logits (MONAI UNet,
            AttentionUnet, UNETR, SwinUNETR, ...).
    """

    input_family = "volume"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, ap: Tensor, lat: Tensor) -> Tensor:
        """Lift both views into a 2-channel volume and run the wrapped network."""
        return self.net(lift_to_volume(ap, lat))
