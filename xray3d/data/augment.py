"""Anatomy-level augmentation of the CT and its mask before rendering, batched on the batch's device.

The views a model sees come from one CT per training sample; with a dozen vertebrae that is a dozen
shapes. Changing the anatomy itself, before the DRRs are rendered, gives the network new shapes with
consistent views and targets (the pose and intensity jitter of the views act after rendering):

* isotropic scaling by a factor in ``[1 - scale, 1 + scale]`` (or in ``[lo, hi]`` for ``scale=[lo, hi]``),
  times a per-axis factor in ``[1 - anisotropy, 1 + anisotropy]`` (shapes wider or flatter than the
  training bones: a lumbar body is wider and deeper for its height than a thoracic one);
* a small rotation of the volume, each Euler angle in ``[-rotation_deg, rotation_deg]``;
* left-right mirroring with probability ``flip_lr_prob`` (the mask is mirrored with it);
* bone density: HU above ``bone_threshold_hu`` scaled about the threshold by ``1 ± bone_density``;
* a coarser scan: with probability ``lowres_prob`` the CT is averaged over 2³ voxels and interpolated
  back (a 3 mm scan seen on the 1.5 mm grid); the mask is left sharp.

Each is off when its magnitude is 0. Volumes are ``(B, 1, s, s, s)`` on the PIR grid (axes P, I, R), so
mirroring flips the last axis. Resampling is one ``affine_grid`` + ``grid_sample`` per batch: trilinear
with border padding for the CT (the ROI continues into tissue, not air), trilinear then > 0.5 for the
mask. All draws come from the caller's generator (one per DDP rank, :mod:`xray3d.data.sampling`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["AnatomyAugment", "apply_variants", "scale_bounds"]


def scale_bounds(scale: float | Sequence[float]) -> tuple[float, float]:
    """``scale`` as ``(lo, hi)`` factors: ``s`` -> ``(1 - s, 1 + s)``, ``[lo, hi]`` unchanged.

    Raises:
        ValueError: naming ``data.augment.scale`` when the bounds are not ``0 < lo <= hi``.
    """
    if isinstance(scale, (int, float)):
        if scale < 0 or scale >= 1:
            raise ValueError(
                f"data.augment.scale must be in [0, 1) (a relative change) or [lo, hi], got {scale}"
            )
        return 1.0 - float(scale), 1.0 + float(scale)
    bounds = tuple(float(v) for v in scale)
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
        raise ValueError(f"data.augment.scale=[lo, hi] needs 0 < lo <= hi, got {list(scale)}")
    return bounds


def _rotation_matrices(angles_rad: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` angles about the three grid axes -> ``(B, 3, 3)`` rotation matrices."""
    cx, cy, cz = torch.cos(angles_rad).unbind(-1)
    sx, sy, sz = torch.sin(angles_rad).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def _resample(
    ct: torch.Tensor, mask: torch.Tensor, rotation: torch.Tensor, factors_pir: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate and scale float ``(B, 1, s, s, s)`` CT + mask about the grid centre in one resampling.

    ``factors_pir`` ``(B, 3)`` enlarges the anatomy along P, I and R; ``rotation`` is ``(B, 3, 3)``.
    """
    b = ct.shape[0]
    # output(x) = input(A x): sampling at x / s enlarges the anatomy by s; affine_grid's axes are (R, I, P)
    matrix = rotation / factors_pir.flip(-1).view(b, 1, 3)
    theta = torch.cat([matrix, torch.zeros(b, 3, 1, device=ct.device)], dim=2)
    grid = F.affine_grid(theta, list(ct.shape), align_corners=False)
    ct = F.grid_sample(ct, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return ct, (mask > 0.5).float()


def _mirror(ct: torch.Tensor, mask: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the samples where ``flip`` ``(B,)`` is true along R (the last PIR axis)."""
    where = flip.view(-1, 1, 1, 1, 1)
    return torch.where(where, ct.flip(-1), ct), torch.where(where, mask.flip(-1), mask)


def apply_variants(
    ct: torch.Tensor, mask: torch.Tensor, factors_pir: torch.Tensor, flip_lr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply fixed, per-sample anatomy changes (validation variants, no randomness).

    Args:
        ct: ``(B, 1, s, s, s)`` HU.
        mask: ``(B, 1, s, s, s)`` in {0, 1}.
        factors_pir: ``(B, 3)`` enlargement along P, I, R (1 = unchanged).
        flip_lr: ``(B,)`` bool, mirror left-right.

    Returns:
        ``(ct, mask)``; samples with factors 1 and no mirror are returned bit for bit.
    """
    factors_pir = factors_pir.to(device=ct.device, dtype=torch.float32)
    flip_lr = flip_lr.to(device=ct.device, dtype=torch.bool)
    mask_dtype = mask.dtype
    ct, mask = ct.float(), mask.float()
    rescaled = (factors_pir != 1).any(-1)
    if bool(rescaled.any()):
        eye = torch.eye(3, device=ct.device).expand(ct.shape[0], 3, 3)
        new_ct, new_mask = _resample(ct, mask, eye, factors_pir)
        keep = rescaled.view(-1, 1, 1, 1, 1)
        ct, mask = torch.where(keep, new_ct, ct), torch.where(keep, new_mask, mask)
    if bool(flip_lr.any()):
        ct, mask = _mirror(ct, mask, flip_lr)
    return ct, mask.to(mask_dtype)


class AnatomyAugment:
    """Random scaling, rotation, mirroring and bone-density change of CT + mask batches.

    Args:
        scale: maximum relative isotropic scale change (0.1 = ±10 %), or the factor range ``[lo, hi]``.
        anisotropy: maximum relative extra scale change per axis (0.1 = ±10 % on P, I and R apart).
        rotation_deg: maximum absolute rotation about each axis, degrees.
        flip_lr_prob: probability of a left-right mirror per sample.
        bone_density: maximum relative change of the HU above ``bone_threshold_hu`` (0.1 = ±10 %).
        bone_threshold_hu: HU from which a voxel counts as bone.
        lowres_prob: probability of rendering from a 2x coarser CT (2³ average, trilinear back).
    """

    def __init__(
        self,
        scale: float | Sequence[float] = 0.0,
        rotation_deg: float = 0.0,
        flip_lr_prob: float = 0.0,
        bone_density: float = 0.0,
        bone_threshold_hu: float = 200.0,
        anisotropy: float = 0.0,
        lowres_prob: float = 0.0,
    ) -> None:
        for name, value in (
            ("rotation_deg", rotation_deg),
            ("bone_density", bone_density),
            ("anisotropy", anisotropy),
        ):
            if value < 0:
                raise ValueError(f"data.augment.{name} must be >= 0, got {value}")
        for name, value in (("flip_lr_prob", flip_lr_prob), ("lowres_prob", lowres_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"data.augment.{name} must be in [0, 1], got {value}")
        if anisotropy >= 1.0:
            raise ValueError(f"data.augment.anisotropy must be < 1 (a relative change), got {anisotropy}")
        self.scale_range = scale_bounds(scale)
        self.anisotropy = float(anisotropy)
        self.lowres_prob = float(lowres_prob)
        self.rotation_deg = float(rotation_deg)
        self.flip_lr_prob = float(flip_lr_prob)
        self.bone_density = float(bone_density)
        self.bone_threshold_hu = float(bone_threshold_hu)

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        rescales = self.scale_range != (1.0, 1.0) or self.anisotropy > 0
        probs = (self.rotation_deg, self.flip_lr_prob, self.bone_density, self.lowres_prob)
        return rescales or any(v > 0 for v in probs)

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
        if self.lowres_prob > 0:
            coarse = torch.rand(b, device=device, generator=generator) < self.lowres_prob
            smooth = F.interpolate(F.avg_pool3d(ct, 2, ceil_mode=True), size=ct.shape[2:], mode="trilinear")
            ct = torch.where(coarse.view(b, 1, 1, 1, 1), smooth, ct)
        lo, hi = self.scale_range
        if (lo, hi) != (1.0, 1.0) or self.anisotropy > 0 or self.rotation_deg > 0:
            matrix = torch.eye(3, device=device).expand(b, 3, 3)
            if self.rotation_deg > 0:
                matrix = _rotation_matrices(uniform(b, 3) * math.radians(self.rotation_deg))
            factors = torch.ones(b, 3, device=device)
            if (lo, hi) != (1.0, 1.0):
                factors = factors * (lo + (uniform(b, 1) + 1) / 2 * (hi - lo))
            if self.anisotropy > 0:
                factors = factors * (1 + uniform(b, 3) * self.anisotropy)
            ct, mask = _resample(ct, mask, matrix, factors)
        if self.flip_lr_prob > 0:
            flip = torch.rand(b, device=device, generator=generator) < self.flip_lr_prob
            ct, mask = _mirror(ct, mask, flip)
        return ct, mask.to(mask_dtype)
