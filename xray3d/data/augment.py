"""Anatomy-level augmentation of the CT and its mask before rendering, batched on the batch's device.

The views a model sees come from one CT per training sample; with a dozen vertebrae that is a dozen
shapes. Changing the anatomy itself, before the DRRs are rendered, gives the network new shapes with
consistent views and targets (the pose and intensity jitter of the views act after rendering):

* isotropic scaling by a factor in ``[1 - scale, 1 + scale]``;
* a small rotation of the volume, each Euler angle in ``[-rotation_deg, rotation_deg]``;
* left-right mirroring with probability ``flip_lr_prob`` (the mask is mirrored with it);
* bone density: HU above ``bone_threshold_hu`` scaled about the threshold by ``1 ± bone_density``.

Each is off when its magnitude is 0. Volumes are ``(B, 1, s, s, s)`` on the PIR grid (axes P, I, R), so
mirroring flips the last axis. Resampling is one ``affine_grid`` + ``grid_sample`` per batch: trilinear
with border padding for the CT (the ROI continues into tissue, not air), trilinear then > 0.5 for the
mask. All draws come from the caller's generator (one per DDP rank, :mod:`xray3d.data.sampling`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["AnatomyAugment"]


def _rotation_matrices(angles_rad: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` angles about the three grid axes -> ``(B, 3, 3)`` rotation matrices."""
    cx, cy, cz = torch.cos(angles_rad).unbind(-1)
    sx, sy, sz = torch.sin(angles_rad).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


class AnatomyAugment:
    """Random scaling, rotation, mirroring and bone-density change of CT + mask batches.

    Args:
        scale: maximum relative isotropic scale change (0.1 = ±10 %).
        rotation_deg: maximum absolute rotation about each axis, degrees.
        flip_lr_prob: probability of a left-right mirror per sample.
        bone_density: maximum relative change of the HU above ``bone_threshold_hu`` (0.1 = ±10 %).
        bone_threshold_hu: HU from which a voxel counts as bone.
    """

    def __init__(
        self,
        scale: float = 0.0,
        rotation_deg: float = 0.0,
        flip_lr_prob: float = 0.0,
        bone_density: float = 0.0,
        bone_threshold_hu: float = 200.0,
    ) -> None:
        for name, value in (("scale", scale), ("rotation_deg", rotation_deg), ("bone_density", bone_density)):
            if value < 0:
                raise ValueError(f"data.augment.{name} must be >= 0, got {value}")
        if not 0.0 <= flip_lr_prob <= 1.0:
            raise ValueError(f"data.augment.flip_lr_prob must be in [0, 1], got {flip_lr_prob}")
        if scale >= 1.0:
            raise ValueError(f"data.augment.scale must be < 1 (a relative change), got {scale}")
        self.scale = float(scale)
        self.rotation_deg = float(rotation_deg)
        self.flip_lr_prob = float(flip_lr_prob)
        self.bone_density = float(bone_density)
        self.bone_threshold_hu = float(bone_threshold_hu)

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return any(v > 0 for v in (self.scale, self.rotation_deg, self.flip_lr_prob, self.bone_density))

    def __call__(
        self, ct: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch: ``ct`` in HU and ``mask`` in {0, 1}, both ``(B, 1, s, s, s)``."""
        if not self.active:
            return ct, mask
        b, device = ct.shape[0], ct.device

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, device=device, generator=generator) * 2 - 1

        ct = ct.float()
        mask_dtype = mask.dtype
        mask = mask.float()
        if self.bone_density > 0:
            factor = 1 + uniform(b, 1, 1, 1, 1) * self.bone_density
            excess = (ct - self.bone_threshold_hu).clamp_min(0)
            ct = ct + excess * (factor - 1)
        if self.scale > 0 or self.rotation_deg > 0:
            matrix = torch.eye(3, device=device).expand(b, 3, 3)
            if self.rotation_deg > 0:
                matrix = _rotation_matrices(uniform(b, 3) * math.radians(self.rotation_deg))
            if self.scale > 0:
                # output(x) = input(A x): sampling at x / s enlarges the anatomy by s
                s = 1 + uniform(b, 1, 1) * self.scale
                matrix = matrix / s
            theta = torch.cat([matrix, torch.zeros(b, 3, 1, device=device)], dim=2)
            grid = F.affine_grid(theta, list(ct.shape), align_corners=False)
            ct = F.grid_sample(ct, grid, mode="bilinear", padding_mode="border", align_corners=False)
            mask = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            mask = (mask > 0.5).float()
        if self.flip_lr_prob > 0:
            flip = torch.rand(b, device=device, generator=generator) < self.flip_lr_prob
            ct = torch.where(flip.view(b, 1, 1, 1, 1), ct.flip(-1), ct)
            mask = torch.where(flip.view(b, 1, 1, 1, 1), mask.flip(-1), mask)
        return ct, mask.to(mask_dtype)
