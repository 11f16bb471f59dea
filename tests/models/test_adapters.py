"""The volume-as-input lift: AP repeated along P, LAT along R (spec §2.7)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from xray3d.models.adapters import VolumeAsInput, lift_to_volume


def test_lift_axes():
    s = 8
    ap = torch.zeros(1, 1, s, s)
    lat = torch.zeros(1, 1, s, s)
    ap[0, 0, 2, 5] = 1.0  # I=2, R=5
    lat[0, 0, 6, 3] = 1.0  # P=6, I=3
    vol = lift_to_volume(ap, lat)
    assert vol.shape == (1, 2, s, s, s)
    assert torch.equal(vol[0, 0, :, 2, 5], torch.ones(s))  # AP pixel repeated along P
    assert float(vol[0, 0].sum()) == s
    assert torch.equal(vol[0, 1, 6, 3, :], torch.ones(s))  # LAT pixel repeated along R
    assert float(vol[0, 1].sum()) == s


def test_lift_rejects_mismatched_views():
    with pytest.raises(ValueError, match=r"\(B, 1, s, s\)"):
        lift_to_volume(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 4))


def test_wrapped_monai_net_output_shape():
    net = VolumeAsInput(UNet(3, 2, 1, (4, 8, 16), (2, 2), num_res_units=1))
    out = net(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    assert out.shape == (2, 1, 16, 16, 16)
