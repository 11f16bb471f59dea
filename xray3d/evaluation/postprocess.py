"""Post-processing of predicted masks, chosen on validation as nnU-Net does.

A prediction of one bone may carry detached fragments (a piece of the neighbouring vertebra, a blob in
the soft tissue) or enclosed cavities. Two candidate steps:

* ``largest_component``: keep the largest 26-connected component (``cc3d.largest_k``);
* ``largest_component_fill``: the same, then fill enclosed cavities (``fill_voids``).

``none`` leaves the prediction as it is. With ``postprocess: auto`` the module scores every candidate on
the validation cases at each validation and keeps the one with the highest mean Dice, and ``none``
unless a step improves it (ties keep ``none``). The choice is stored in the checkpoint, applied at test
(``train.py``, ``eval.py``) and by ``xray3d-predict``; the test report carries the Dice with and
without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import cc3d
import fill_voids
import numpy as np

__all__ = ["POSTPROCESS_STEPS", "apply_postprocess", "check_postprocess", "choose_postprocess"]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    mask = np.ascontiguousarray(mask, dtype=bool)
    if not mask.any():
        return mask
    return cc3d.largest_k(mask, k=1, connectivity=26) > 0


def _largest_component_fill(mask: np.ndarray) -> np.ndarray:
    return fill_voids.fill(_largest_component(mask), in_place=False)


#: name -> step; every step maps a boolean (z, y, x) mask to a boolean mask of the same shape
POSTPROCESS_STEPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda mask: np.asarray(mask, dtype=bool),
    "largest_component": _largest_component,
    "largest_component_fill": _largest_component_fill,
}


def check_postprocess(name: str, allow_auto: bool = False) -> str:
    """Validate a post-processing name (``auto`` only where a choice on validation is possible)."""
    valid = [*POSTPROCESS_STEPS, *(["auto"] if allow_auto else [])]
    if name not in valid:
        raise ValueError(f"unknown post-processing {name!r}: use one of {valid} (model.postprocess)")
    return name


def apply_postprocess(mask: np.ndarray, name: str) -> np.ndarray:
    """Apply the named step to a binary mask (3D, or any leading batch/channel axes of size 1)."""
    step = POSTPROCESS_STEPS[check_postprocess(name)]
    arr = np.asarray(mask, dtype=bool)
    if arr.ndim == 3:
        return step(arr)
    flat = arr.reshape(-1, *arr.shape[-3:])
    return np.stack([step(m) for m in flat]).reshape(arr.shape)


def choose_postprocess(rows: Sequence[Mapping], candidates: Sequence[str], min_gain: float = 0.0) -> str:
    """The candidate whose mean validation Dice is highest (``none`` unless one beats it by > min_gain).

    Args:
        rows: validation case rows with ``dice_pp_<name>`` per candidate (and ``dice_pp_none``).
        candidates: the names scored.
        min_gain: Dice a step must add over ``none`` to be chosen.
    """

    def mean(name: str) -> float:
        vals = [float(r[f"dice_pp_{name}"]) for r in rows if f"dice_pp_{name}" in r]
        vals = [v for v in vals if np.isfinite(v)]
        return float(np.mean(vals)) if vals else -np.inf

    best, best_dice = "none", mean("none")
    for name in candidates:
        if name != "none" and mean(name) > best_dice + min_gain:
            best, best_dice = name, mean(name)
    return best
