"""``xray3d-measure``: clinical parameters of one mask file, printed as JSON.

Usage::

    xray3d-measure MASK.nii.gz --anatomy femur [--spacing-mm 1.0] [--label 3] [--out params.json]
    xray3d-measure MASK.nii.gz --anatomy vertebra --convention reference

The anatomy names the measurement config ``conf/clinical/<anatomy>.yaml`` (femur, hip, vertebra, rib).
Points are in the file's world coordinates (mm, from its affine), lengths in mm, angles in degrees.
``--spacing-mm`` replaces the header's voxel size (keeping its directions), for files whose headers are
wrong. ``--label`` measures one label of a label map (default: every non-zero voxel). ``--convention``
(``xray3d`` or ``reference``, default: the config's) selects the clinical definitions for the anatomies whose
config has a ``convention`` option (hip, vertebra); see docs/evaluation.md, "Clinical conventions".

Exit code 0 with ``{"file", "anatomy", "convention", "spacing_mm", "parameters"}`` on stdout; exit code 1 with
``{"file", "anatomy", "error"}`` when the file cannot be read or the parameters cannot be measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
from omegaconf import OmegaConf

from xray3d import CONF_DIR
from xray3d.clinical.base import CONVENTIONS, ClinicalError, ConventionError, check_convention
from xray3d.data.io import DataError, load_nifti, write_text_atomic

__all__ = ["anatomies", "convention_of", "load_measure", "measure_file", "main"]


def anatomies() -> list[str]:
    """The anatomies with a measurement config in ``conf/clinical``."""
    return sorted(p.stem for p in (Path(CONF_DIR) / "clinical").glob("*.yaml"))


def _config(anatomy: str):
    path = Path(CONF_DIR) / "clinical" / f"{anatomy}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown anatomy {anatomy!r}; choose one of {anatomies()}")
    return OmegaConf.load(path)


def convention_of(anatomy: str, convention: str | None = None) -> str:
    """The clinical convention a measurement of ``anatomy`` uses: ``convention`` or the config's default.

    Raises:
        ConventionError: ``convention`` is unknown, or the anatomy has only the xray3d definitions.
    """
    cfg = _config(anatomy)
    default = str(cfg.get("convention", "xray3d"))
    if convention is None:
        return default
    check_convention(convention, "--convention")
    if "convention" not in cfg and convention != default:
        raise ConventionError(
            f"--convention={convention!r}: anatomy {anatomy!r} has only the {default!r} convention "
            f"(conf/clinical/{anatomy}.yaml has no convention option)"
        )
    return convention


def load_measure(anatomy: str, convention: str | None = None):
    """The ``measure(mask, affine)`` callable of ``conf/clinical/<anatomy>.yaml``.

    Args:
        anatomy: a config name of :func:`anatomies`.
        convention: ``"xray3d"`` or ``"reference"`` (see :data:`~xray3d.clinical.base.CONVENTIONS`); None
            keeps the config's.
    """
    cfg = _config(anatomy)
    chosen = convention_of(anatomy, convention)
    if "convention" in cfg:
        cfg.convention = chosen
    return hydra.utils.instantiate(cfg)


def measure_file(
    path: str | Path,
    anatomy: str,
    spacing_mm: Sequence[float] | None = None,
    label: int | None = None,
    convention: str | None = None,
) -> dict:
    """Read a NIfTI mask and measure the anatomy's clinical parameters.

    Raises:
        DataError: unreadable file or a label that is absent.
        ClinicalError: the mask cannot be measured (the message says why).
        ConventionError: an unknown convention, or one the anatomy does not have.
    """
    measure = load_measure(anatomy, convention)
    img = load_nifti(path, "mask")
    data = np.asanyarray(img.dataobj)
    affine = np.asarray(img.affine, dtype=float).copy()
    if spacing_mm:
        sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
        norms = np.linalg.norm(affine[:3, :3], axis=0)
        affine[:3, :3] = affine[:3, :3] / norms * sp
    if label is not None:
        if not (data == label).any():
            present = sorted(int(v) for v in np.unique(data) if v)[:30]
            raise DataError(f"{path}: label {label} does not occur (labels present: {present})")
        mask = data == label
    else:
        mask = data > 0.5 if data.dtype.kind == "f" else data != 0
    params = measure(mask, affine)
    return {
        "file": str(path),
        "anatomy": anatomy,
        "convention": convention_of(anatomy, convention),
        "spacing_mm": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        "parameters": params,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="xray3d-measure", description="Clinical parameters of one mask file.")
    p.add_argument("mask", type=Path, help="NIfTI mask (.nii/.nii.gz)")
    p.add_argument("--anatomy", required=True, help=f"one of {anatomies()}")
    p.add_argument("--spacing-mm", nargs="+", type=float, default=None, help="voxel size (1 or 3 values)")
    p.add_argument("--label", type=int, default=None, help="measure only this label of a label map")
    p.add_argument(
        "--convention",
        default=None,
        help=f"clinical definitions, one of {list(CONVENTIONS)} (default: the config's, xray3d)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.spacing_mm is not None and len(args.spacing_mm) not in (1, 3):
        p.error(f"--spacing-mm takes 1 or 3 values, got {args.spacing_mm}")
    try:
        result = measure_file(args.mask, args.anatomy, args.spacing_mm, args.label, args.convention)
        code = 0
    except (DataError, ClinicalError, ValueError) as exc:
        result = {"file": str(args.mask), "anatomy": args.anatomy, "error": str(exc)}
        code = 1
    text = json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n"
    (sys.stdout if code == 0 else sys.stderr).write(text)
    if args.out is not None:
        write_text_atomic(text, args.out)
    return code


if __name__ == "__main__":
    sys.exit(main())
