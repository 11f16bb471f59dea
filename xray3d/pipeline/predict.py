"""``xray3d-predict``: a radiograph pair (or a CSV of pairs, or a CT) -> 3D bone, mesh, clinical parameters.

Examples::

    xray3d-predict ckpt_path=run/checkpoints/last.ckpt ap=ap.dcm lat=lat.dcm output_dir=out/
    xray3d-predict ckpt_path=... ap=ap.png lat=lat.png pixel_spacing_mm=0.15 output_dir=out/
    xray3d-predict ckpt_path=... pairs=pairs.csv output_dir=out/          # batch mode
    xray3d-predict ckpt_path=... ct=ct.nii.gz ct_mask=bone.nii.gz output_dir=out/   # demo: DRRs of a CT

The network, the grid (size, spacing), the DRR geometry and the clinical measures come from the training
run's ``.hydra/config.yaml`` next to the checkpoint. Prediction runs through ``Trainer.predict`` (GPU,
DDP: each rank writes the cases it predicted, rank 0 the summary). Every case gets a folder
``<output_dir>/<case_id>/`` with ``mask.nii.gz``, ``probability.nii.gz``, ``uncertainty.nii.gz``,
``mesh.stl``, ``mesh.ply``, ``clinical.json``, ``qc.png`` and ``case.json``; batch mode adds
``predictions.csv``. See docs/predict.md.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import lightning as L
import nibabel as nib
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Dataset

from xray3d import CONF_DIR
from xray3d.data.io import DataError, save_nifti_atomic, write_csv_atomic, write_json_atomic
from xray3d.data.projection import BiplanarProjector, minmax_normalize, pir_affine
from xray3d.evaluation.engine import gather_cases
from xray3d.evaluation.postprocess import apply_postprocess, check_postprocess
from xray3d.pipeline.preflight import run_or_exit
from xray3d.predict.mesh import volume_to_mesh
from xray3d.predict.qc import qc_figure
from xray3d.predict.radiograph import (
    DEFAULT_ORIENTATION,
    ViewGeometry,
    check_same_study,
    crop_to_model,
    parse_orientation,
    read_radiograph,
)
from xray3d.utils.instantiate import save_run_info
from xray3d.utils.runinfo import _train_config_of

__all__ = ["run", "main", "Case", "TrainingSetup", "load_training_setup", "PredictionWriter"]

log = logging.getLogger(__name__)
VIEWS = ("ap", "lat")


@dataclass
class TrainingSetup:
    """What a prediction takes from the training run: network config, grid, geometry, clinical measure."""

    config: DictConfig
    grid_size: int
    spacing_mm: float
    anatomy: str
    projector: BiplanarProjector
    clinical: DictConfig | None

    @property
    def fov_px(self) -> int:
        """Training detector pixels per side."""
        return self.projector.detector_size((self.grid_size,) * 3, self.spacing_mm)


@dataclass
class Case:
    """One prepared case: the two model inputs (normalised as training DRRs) and what produced them."""

    case_id: str
    ap: np.ndarray
    lat: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)
    gt_mask: np.ndarray | None = None


def load_training_setup(cfg: DictConfig, ckpt: Path) -> TrainingSetup:
    """Read the training run's config of ``ckpt`` (or ``cfg.train_config``).

    Raises:
        DataError: no training config can be found.
    """
    path = Path(cfg.train_config) if cfg.get("train_config") else _train_config_of(ckpt)
    if path is None or not path.is_file():
        raise DataError(
            f"no training config for {ckpt}: xray3d-predict reads the network, grid and DRR geometry from "
            "the training run's .hydra/config.yaml next to the checkpoint "
            "(<run>/checkpoints/x.ckpt); pass train_config=/path/to/<run>/.hydra/config.yaml"
        )
    train_cfg = OmegaConf.load(path)
    with open_dict(train_cfg):
        if OmegaConf.select(train_cfg, "model.net.autoencoder_ckpt") is not None:
            train_cfg.model.net.autoencoder_ckpt = None  # a stage-2 checkpoint holds the decoder itself
    projector = hydra.utils.instantiate(train_cfg.projection)
    clinical = cfg.get("clinical") or OmegaConf.select(train_cfg, "data.clinical")
    return TrainingSetup(
        config=train_cfg,
        grid_size=int(train_cfg.data.grid_size),
        spacing_mm=float(train_cfg.data.spacing_mm),
        anatomy=str(train_cfg.data.anatomy),
        projector=projector,
        clinical=clinical,
    )


# ---------------------------------------------------------------------------------------------- inputs
def _opt(value):
    """A CSV cell or option: None for empty / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return value


def _center(value, path: Path, view: str) -> tuple[float, float] | None:
    """``[row, col]`` (option, list or CSV text ``"r,c"``) of the bone's centre, or None."""
    value = _opt(value)
    if value is None:
        return None
    vals = list(value) if not isinstance(value, str) else value.strip("[]()").split(",")
    what = f"{view}_center_px"
    try:
        row, col = (float(v) for v in vals)
    except (TypeError, ValueError):
        raise DataError(
            f"{path}: {what} must be [row, col] in pixels of the displayed image, got {value!r}"
        ) from None
    return row, col


def _histogram_reference(cfg: DictConfig, setup: TrainingSetup) -> dict[str, np.ndarray]:
    """Training-set DRRs of both views (rendered as in training, reference poses), pooled per view."""
    from xray3d.data.dataset import ManifestDataset

    data_dir = Path(cfg.histogram_data_dir or str(setup.config.data.data_dir))
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise DataError(
            f"histogram_match=true needs the training dataset's DRRs, but {manifest} does not exist; "
            "pass histogram_data_dir=/path/to/prepared/dataset, or histogram_match=false"
        )
    ds = ManifestDataset(
        data_dir,
        manifest,
        list(setup.config.data.train_splits),
        setup.anatomy,
        setup.spacing_mm,
        setup.grid_size,
    )
    n = min(len(ds), int(cfg.histogram_cases))
    if n == 0:
        raise DataError(f"no {setup.anatomy!r} training samples in {manifest} for histogram matching")
    ct = torch.stack([ds[i]["ct"] for i in range(n)])
    with torch.no_grad():
        views = setup.projector(ct.float(), spacing_mm=setup.spacing_mm)
    # the DRRs stacked into one 2D image per view (match_histograms pools every pixel of the reference)
    return {v: views[v][:, 0].reshape(-1, setup.grid_size).numpy() for v in VIEWS}


def _normalise(img: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """Min-max to [0, 1] as the training DRRs; then, optionally, histogram-matched to ``reference``."""
    out = minmax_normalize(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None])[0, 0]
    out = out.numpy()
    if reference is not None:
        from skimage.exposure import match_histograms

        out = minmax_normalize(
            torch.from_numpy(match_histograms(out, reference).astype(np.float32))[None, None]
        )
        out = out[0, 0].numpy()
    return out.astype(np.float32)


def _distances(
    cfg: DictConfig, row: dict, rads: dict, setup: TrainingSetup, view: str
) -> tuple[float, float, str]:
    """Source-object and source-detector distances of one view, and where they came from."""
    sod = _opt(row.get("source_to_object_mm")) or cfg.source_to_object_mm
    sdd = _opt(row.get("source_to_detector_mm")) or cfg.source_to_detector_mm
    if sod is not None or sdd is not None:
        if sod is None or sdd is None:
            raise DataError(
                "give both source_to_object_mm and source_to_detector_mm (or neither: DICOM tags, "
                "else the training geometry)"
            )
        source = "option"
    elif rads[view].distances_mm is not None:
        sod, sdd = rads[view].distances_mm
        source = rads[view].distances_source
    else:
        sod, sdd = setup.projector.source_to_isocenter_mm, setup.projector.source_to_detector_mm
        source = "training geometry"
    sod, sdd = float(sod), float(sdd)
    if not (0 < sod <= sdd):
        raise DataError(f"need 0 < source_to_object_mm <= source_to_detector_mm, got {sod} and {sdd}")
    return sod, sdd, source


def prepare_pair(
    cfg: DictConfig, row: dict, setup: TrainingSetup, reference: dict | None, base: Path
) -> Case:
    """Read, check and crop one AP/LAT pair into model inputs.

    Raises:
        DataError: naming the file and the fix (unreadable, no spacing, different studies, too small).
    """
    paths = {}
    for view in VIEWS:
        value = _opt(row.get(view))
        if value is None:
            raise DataError(f"the pair has no {view} image; give both ap= and lat= (or both CSV columns)")
        p = Path(str(value)).expanduser()
        paths[view] = p if p.is_absolute() else base / p
    rads = {}
    for view in VIEWS:
        spacing = (
            _opt(row.get(f"{view}_pixel_spacing_mm"))
            or cfg.get(f"{view}_pixel_spacing_mm")
            or _opt(row.get("pixel_spacing_mm"))
            or cfg.pixel_spacing_mm
        )
        rads[view] = read_radiograph(paths[view], spacing)
    if not cfg.allow_different_studies:
        check_same_study(rads["ap"], rads["lat"])
    images, info = {}, {"inputs": {}}
    for view in VIEWS:
        rad = rads[view]
        sod, sdd, source = _distances(cfg, row, rads, setup, view)
        orient = _opt(row.get(f"{view}_orientation")) or cfg.get(f"{view}_orientation")
        center = _center(_opt(row.get(f"{view}_center_px")) or cfg.get(f"{view}_center_px"), rad.path, view)
        geometry = ViewGeometry(
            center_px=center,
            source_to_object_mm=sod,
            source_to_detector_mm=sdd,
            orientation=parse_orientation(orient, rad.path, f"{view}_orientation") if orient else None,
        )
        crop = crop_to_model(
            rad, view, geometry, setup.grid_size, setup.fov_px, setup.projector.pixel_spacing_mm
        )
        images[view] = _normalise(crop, None if reference is None else reference[view])
        info["inputs"][view] = {
            "path": str(rad.path),
            "pixel_spacing_mm": list(rad.spacing_mm),
            "pixel_spacing_source": rad.spacing_source,
            "image_px": list(rad.pixels.shape),
            "center_px": list(center) if center else "image centre",
            "orientation": ",".join(geometry.orientation or rad.orientation or DEFAULT_ORIENTATION[view]),
            "source_to_object_mm": sod,
            "source_to_detector_mm": sdd,
            "distances_source": source,
            "magnification": geometry.magnification,
        }
    case_id = _check_case_id(str(_opt(row.get("case_id")) or paths["ap"].name.split(".")[0]))
    # the bone's centre (the isocentre) is the world origin; axes RAS+ as in training
    affine = pir_affine((setup.grid_size,) * 3, setup.spacing_mm).numpy()
    info["histogram_matched"] = reference is not None
    return Case(case_id, images["ap"], images["lat"], affine, info)


def prepare_ct(cfg: DictConfig, setup: TrainingSetup) -> Case:
    """Render the AP/LAT pair of a CT with the training geometry (demo and tests).

    The ROI (training grid) is centred on the mask's centroid (``ct_mask``) or the CT's centre; the
    optional mask is the ground truth the prediction is compared with.
    """
    from xray3d.data.io import load_nifti
    from xray3d.data.roi import extract_roi, label_centroid_mm

    ct = load_nifti(cfg.ct, "CT")
    if ct.ndim != 3:
        raise DataError(f"ct={cfg.ct}: expected a 3D CT volume in HU, got shape {ct.shape}")
    if cfg.ct_mask:
        mask_img = load_nifti(cfg.ct_mask, "mask")
        mask = np.asarray(mask_img.dataobj) > 0
        if mask.shape != ct.shape:
            raise DataError(
                f"ct_mask={cfg.ct_mask} has shape {mask.shape}, the CT {ct.shape}: give the CT's mask"
            )
        if not mask.any():
            raise DataError(f"ct_mask={cfg.ct_mask} is empty; give a mask of the bone to centre on")
        centre = label_centroid_mm(mask, ct.affine)
    else:
        mask = np.zeros(ct.shape, dtype=bool)
        centre = ct.affine[:3, :3] @ ((np.array(ct.shape) - 1) / 2.0) + ct.affine[:3, 3]
    ct_roi, mask_roi = extract_roi(ct, mask, centre, setup.grid_size, setup.spacing_mm)
    vol = torch.from_numpy(np.asarray(ct_roi.dataobj, dtype=np.float32))[None, None]
    with torch.no_grad():
        views = setup.projector(vol, spacing_mm=setup.spacing_mm)
    case_id = _check_case_id(str(cfg.get("case_id") or Path(cfg.ct).name.split(".")[0]))
    info = {"inputs": {"ct": str(cfg.ct), "ct_mask": str(cfg.ct_mask) if cfg.ct_mask else None}}
    info["roi_center_ras_mm"] = [float(c) for c in centre]
    return Case(
        case_id,
        views["ap"][0, 0].numpy(),
        views["lat"][0, 0].numpy(),
        ct_roi.affine,
        info,
        gt_mask=np.asarray(mask_roi.dataobj) > 0 if cfg.ct_mask else None,
    )


def collect_cases(cfg: DictConfig, setup: TrainingSetup) -> tuple[list[Case], list[dict]]:
    """The cases to predict and the skipped ones (``{"case_id", "ap", "lat", "error"}``, batch mode).

    A single pair or CT raises its :class:`DataError`; in batch mode a bad pair is skipped and reported.
    """
    modes = [m for m in ("ap", "pairs", "ct") if cfg.get(m)]
    if cfg.get("lat") and "ap" not in modes:
        modes.append("ap")
    if len(modes) != 1:
        raise DataError(
            "give exactly one input: ap=<file> lat=<file>, pairs=<csv> or ct=<CT NIfTI>"
            + (f" (got {', '.join(modes)})" if modes else "")
        )
    reference = _histogram_reference(cfg, setup) if cfg.histogram_match else None
    if modes == ["ct"]:
        return [prepare_ct(cfg, setup)], []
    if modes == ["ap"]:
        row = {"ap": cfg.ap, "lat": cfg.get("lat"), "case_id": cfg.get("case_id")}
        return [prepare_pair(cfg, row, setup, reference, Path.cwd())], []
    csv = Path(cfg.pairs)
    if not csv.is_file():
        raise DataError(
            f"pairs={csv} does not exist; give a CSV with columns ap, lat (and optionally case_id)"
        )
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"pairs={csv} cannot be read as CSV ({exc})") from exc
    missing = [c for c in ("ap", "lat") if c not in df.columns]
    if missing:
        raise DataError(
            f"pairs={csv} lacks the columns {missing}; it needs ap and lat (paths, relative to the CSV)"
        )
    cases, skipped, seen = [], [], set()
    for i, row in enumerate(df.to_dict("records")):
        row = {k: _opt(v) for k, v in row.items()}
        row.setdefault("case_id", None)
        row["case_id"] = row["case_id"] or f"case{i:04d}_{Path(str(row['ap'] or 'none')).name.split('.')[0]}"
        try:
            if row["case_id"] in seen:
                raise DataError(f"case_id {row['case_id']!r} appears twice in {csv}; make the ids unique")
            case = prepare_pair(cfg, row, setup, reference, csv.parent)
            case.info["input_row"] = i
            cases.append(case)
            seen.add(row["case_id"])
        except DataError as exc:
            log.warning("skipping %s: %s", row["case_id"], exc)
            skipped.append(
                {
                    "case_id": row["case_id"],
                    "input_row": i,
                    "ap": row.get("ap"),
                    "lat": row.get("lat"),
                    "error": str(exc),
                }
            )
    return cases, skipped


def _check_case_id(case_id: str) -> str:
    """A case id becomes a folder name: letters, digits, ``.``, ``_`` and ``-`` only."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", case_id) or set(case_id) == {"."}:
        raise DataError(
            f"case_id {case_id!r} cannot name a folder: use letters, digits, '.', '_' and '-' only"
        )
    return case_id


class CaseDataset(Dataset):
    """The prepared cases as model batches (``ap``, ``lat`` ``(1, s, s)``, ``sample_id``, ``index``)."""

    def __init__(self, cases: list[Case]) -> None:
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        return {
            "ap": torch.from_numpy(case.ap)[None],
            "lat": torch.from_numpy(case.lat)[None],
            "sample_id": case.case_id,
            "index": index,
        }


# ---------------------------------------------------------------------------------------------- outputs
def _nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    save_nifti_atomic(img, path)


def _scalars(result: dict, prefix: str = "clinical_") -> dict:
    return {
        f"{prefix}{k}": v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


class PredictionWriter(BasePredictionWriter):
    """Write every predicted case's files (on the rank that predicted it); rank 0 writes the summary.

    Args:
        output_dir: the run folder; each case gets ``<output_dir>/<case_id>/``.
        cases: the prepared cases (indexed by the batch's ``index``).
        threshold: bone threshold of the model.
        measure: the anatomy's clinical ``measure(mask, affine)`` or None.
        smoothing_iterations: Taubin iterations of the mesh (0 = none).
        skipped: the bad pairs of batch mode (reported in ``predictions.csv``).
        batch_mode: write ``predictions.csv``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        cases: list[Case],
        threshold: float,
        measure=None,
        smoothing_iterations: int = 0,
        skipped: list[dict] | None = None,
        batch_mode: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.cases = cases
        self.threshold = float(threshold)
        self.measure = measure
        self.smoothing_iterations = int(smoothing_iterations)
        self.skipped = list(skipped or [])
        self.batch_mode = batch_mode
        self.rows: list[dict] = []
        self.summary: list[dict] = []
        #: post-processing of the masks (the model's choice on validation, set when prediction starts)
        self.postprocess = "none"

    def on_predict_start(self, trainer, pl_module) -> None:
        self.postprocess = check_postprocess(getattr(pl_module, "postprocess_choice", "none"))

    def write_case(self, case: Case, prob: np.ndarray, unc: np.ndarray, score: float, n_samples: int) -> dict:
        """Write the files of one case; returns its summary row."""
        out = self.output_dir / case.case_id
        out.mkdir(parents=True, exist_ok=True)
        raw = prob > self.threshold
        mask = apply_postprocess(raw, self.postprocess)
        surface = prob
        if self.postprocess != "none":  # the mesh follows the post-processed mask
            surface = np.where(raw & ~mask, 0.0, np.where(mask & ~raw, (1 + self.threshold) / 2, prob))
        spacing = float(np.abs(np.linalg.det(case.affine[:3, :3])) ** (1 / 3))
        _nifti(mask.astype(np.uint8), case.affine, out / "mask.nii.gz")
        _nifti(prob.astype(np.float32), case.affine, out / "probability.nii.gz")
        _nifti(unc.astype(np.float32), case.affine, out / "uncertainty.nii.gz")
        row = {
            "case_id": case.case_id,
            "input_row": int(case.info.get("input_row", 0)),
            "status": "ok",
            "output_dir": str(out),
            "volume_mm3": float(mask.sum() * spacing**3),
            "uncertainty_score": float(score),
            "mean_entropy_bits": float(unc[mask].mean()) if mask.any() else 0.0,
            "mc_samples": int(n_samples),
            "postprocess": self.postprocess,
        }
        mesh = volume_to_mesh(
            surface, case.affine, level=self.threshold, smoothing_iterations=self.smoothing_iterations
        )
        if mesh is None:
            row.update(mesh_watertight=False, mesh_volume_mm3=0.0, mesh_components=0)
        else:
            mesh.export(out / "mesh.stl")
            mesh.export(out / "mesh.ply")
            row.update(
                mesh_watertight=bool(mesh.is_watertight),
                mesh_volume_mm3=float(mesh.volume),
                mesh_components=len(mesh.split(only_watertight=False)),
            )
        clinical: dict = {}
        if self.measure is not None:
            try:
                clinical = self.measure(mask, case.affine)
            except Exception as exc:  # ClinicalError (cannot measure this mask) or an empty prediction
                clinical = {"error": f"{type(exc).__name__}: {exc}"}
        write_json_atomic(clinical, out / "clinical.json")
        row["clinical_error"] = clinical.get("error")
        row.update(_scalars(clinical))
        if case.gt_mask is not None:
            inter = float((mask & case.gt_mask).sum())
            total = float(mask.sum() + case.gt_mask.sum())
            row["dice_vs_ct_mask"] = 2 * inter / total if total else 1.0
        title = (
            f"{case.case_id}: volume {row['volume_mm3'] / 1000:.1f} cm3, uncertainty score "
            f"{row['uncertainty_score']:.3f} ({n_samples} samples)"
        )
        qc_figure(case.ap, case.lat, prob, self.threshold, out / "qc.png", title=title)
        write_json_atomic({**row, **case.info, "affine": case.affine.tolist()}, out / "case.json")
        return row

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        prob = prediction["prob"][:, 0].float().cpu().numpy()
        unc = prediction["uncertainty"][:, 0].float().cpu().numpy()
        score = prediction["score"].float().cpu().numpy()
        for i, index in enumerate(batch["index"].tolist()):
            self.rows.append(
                self.write_case(
                    self.cases[index], prob[i], unc[i], float(score[i]), int(prediction["n_samples"])
                )
            )

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        rows, _ = gather_cases([{**r, "sample_id": r["case_id"]} for r in self.rows])
        self.rows = []
        if not trainer.is_global_zero:
            return
        rows = [{k: v for k, v in r.items() if k != "sample_id"} for r in rows]
        self.summary = rows + [{**s, "status": "skipped"} for s in self.skipped]
        self.summary.sort(key=lambda r: r["input_row"])  # the order of the pairs CSV
        for r in rows:
            n_clin = sum(1 for k in r if k.startswith("clinical_") and k != "clinical_error")
            clin = "failed" if r.get("clinical_error") else f"{n_clin} values"
            print(
                f"{r['case_id']}: volume {r['volume_mm3']:.0f} mm3, "
                f"uncertainty {r['uncertainty_score']:.3f}, "
                f"mesh {'watertight' if r['mesh_watertight'] else 'NOT watertight'}, clinical {clin} "
                f"-> {r['output_dir']}",
                flush=True,
            )
        for s in self.skipped:
            print(f"{s['case_id']}: SKIPPED ({s['error']})", flush=True)
        if self.batch_mode:
            write_csv_atomic(pd.DataFrame(self.summary), self.output_dir / "predictions.csv")
            print(f"predictions.csv: {self.output_dir / 'predictions.csv'}", flush=True)


# ---------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> list[dict]:
    """Predict every case of ``cfg`` with ``cfg.ckpt_path``; returns the summary rows (rank 0)."""
    ckpt = Path(str(cfg.ckpt_path))
    if not ckpt.is_file():
        raise DataError(f"ckpt_path={ckpt} does not exist; pass the path of a .ckpt written by train.py")
    if cfg.mc_samples < 1:
        raise DataError(f"mc_samples must be >= 1, got {cfg.mc_samples}")
    setup = load_training_setup(cfg, ckpt)
    cases, skipped = collect_cases(cfg, setup)
    out = Path(str(cfg.paths.output_dir))
    save_run_info(cfg, out)
    model = hydra.utils.instantiate(setup.config.model, optimizer=None, scheduler=None)
    model.configure_prediction(cfg.mc_samples, cfg.pose_jitter_deg, cfg.seed)
    measure = hydra.utils.instantiate(setup.clinical) if setup.clinical is not None else None
    writer = PredictionWriter(
        out,
        cases,
        model.threshold,
        measure,
        cfg.mesh_smoothing_iterations,
        skipped,
        batch_mode=bool(cfg.get("pairs")),
    )
    if not cases:
        writer.summary = [{**s, "status": "skipped"} for s in skipped]
        write_csv_atomic(pd.DataFrame(writer.summary), out / "predictions.csv")
        raise DataError(
            f"no usable pair in pairs={cfg.pairs}: every pair was skipped (see {out / 'predictions.csv'})"
        )
    trainer_cfg = cfg.trainer
    if not cfg.get("use_gpu", True):
        trainer_cfg = OmegaConf.merge(trainer_cfg, {"accelerator": "cpu"})
    trainer: L.Trainer = hydra.utils.instantiate(
        trainer_cfg, callbacks=[writer], logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    loader = DataLoader(CaseDataset(cases), batch_size=int(cfg.batch_size), shuffle=False, num_workers=0)
    trainer.predict(
        model, dataloaders=loader, ckpt_path=str(ckpt), return_predictions=False, weights_only=False
    )
    return writer.summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``xray3d-predict ckpt_path=... ap=... lat=...``)."""
    run_or_exit(run, cfg)


if __name__ == "__main__":
    main()
