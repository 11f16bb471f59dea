"""Both stages of the TL-embedding model in one command (spec §3.6).

``python -m xray3d.pipeline.two_stage [hydra overrides...]`` trains stage 1 (the denoising mask autoencoder,
``experiment=tl_embedding/stage1_autoencoder``), then stage 2 (the latent predictor with the frozen stage-1
decoder, ``experiment=tl_embedding/stage2_predictor``) with ``model.net.autoencoder_ckpt`` set to stage 1's
checkpoint. The overrides go to both stages (``data=...``, ``trainer.max_steps=...``, ``debug=limit``, ...);
``experiment=benchmark/<anatomy>`` replaces the stage experiments and picks the anatomy's TL settings.
Both runs go under ``<paths.log_dir>/tl_embedding/<data>/<time>/{stage1_autoencoder,stage2_predictor}``
(or under ``hydra.run.dir=...`` when given), each a normal run directory that ``eval.py`` understands.

Stage 2 uses stage 1's ``last.ckpt`` like the reference (``--stage1-checkpoint best`` takes the best
validation checkpoint instead); ``--autoencoder-ckpt PATH`` skips stage 1 and trains stage 2 on ``PATH``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from xray3d import CONF_DIR
from xray3d.pipeline import train

__all__ = ["STAGES", "compose_stage", "run", "main"]

log = logging.getLogger(__name__)

#: stage name -> (experiment used when the user gives none, model config)
STAGES = {
    "stage1_autoencoder": ("tl_embedding/stage1_autoencoder", "tl_autoencoder"),
    "stage2_predictor": ("tl_embedding/stage2_predictor", "tl_predictor"),
}


def _stage_overrides(stage: str, overrides: Sequence[str]) -> list[str]:
    """The stage's experiment (unless the user chose one) and model, then the user's overrides."""
    experiment, model = STAGES[stage]
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if "model" in keys:
        raise ValueError(
            "two_stage picks the model of each stage itself (tl_autoencoder, then tl_predictor); "
            "drop the model=... override"
        )
    own = [] if "experiment" in keys else [f"experiment={experiment}"]
    return [*own, *overrides, f"model={model}"]


def _set_hydra(cfg: DictConfig, output_dir: Path) -> None:
    """Register ``cfg`` as the current Hydra config with ``output_dir`` as the run directory."""
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)


def compose_stage(stage: str, overrides: Sequence[str], output_dir: Path | None = None) -> DictConfig:
    """Compose ``train.yaml`` for one stage, as ``python train.py`` would, running in ``output_dir``.

    Args:
        stage: a key of :data:`STAGES`.
        overrides: Hydra overrides of the user (the stage's experiment and model are added).
        output_dir: the run directory; ``None`` only composes (``${hydra:runtime.output_dir}`` stays unset).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=_stage_overrides(stage, overrides), return_hydra_config=True
        )
    if output_dir is not None:
        _set_hydra(cfg, output_dir)
    return cfg


def _runs_root(cfg: DictConfig, overrides: Sequence[str]) -> Path:
    """``hydra.run.dir`` when the user set it, else ``<log_dir>/tl_embedding/<data>/<time>``."""
    _set_hydra(cfg, Path("."))  # lets ${hydra:...} resolve
    if any(o.startswith("hydra.run.dir=") for o in overrides):
        return Path(cfg.hydra.run.dir)
    data = cfg.hydra.runtime.choices.data
    return Path(cfg.paths.log_dir) / "tl_embedding" / data / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _save_hydra_files(cfg: DictConfig, output_dir: Path, overrides: Sequence[str]) -> None:
    """Write ``.hydra/config.yaml`` and ``overrides.yaml`` as ``train.py`` does (``eval.py`` reads them)."""
    hydra_dir = output_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(job_cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")


def _run_stage(stage: str, overrides: Sequence[str], output_dir: Path, extra: dict | None = None) -> dict:
    cfg = compose_stage(stage, overrides, output_dir)
    with open_dict(cfg):
        for key, value in (extra or {}).items():
            OmegaConf.update(cfg, key, value, merge=False)
    _save_hydra_files(
        cfg,
        output_dir,
        [*_stage_overrides(stage, overrides), *(f"{k}={v}" for k, v in (extra or {}).items())],
    )
    log.info("TL-embedding %s -> %s", stage, output_dir)
    metrics, _ = train.run(cfg)
    return metrics


def _stage1_checkpoint(metrics: dict, which: str, run_dir: Path) -> str:
    """Stage 1's ``last`` (or ``best``) checkpoint, falling back to the other one."""
    paths = metrics.get("paths", {})
    best = [paths.get("best_checkpoint")]
    # Lightning can forget last_model_path once trainer.test has reloaded the best checkpoint.
    last = [paths.get("last_checkpoint"), *(str(Path(b).parent / "last.ckpt") for b in best if b)]
    last.append(str(run_dir / "checkpoints" / "last.ckpt"))
    for candidate in last + best if which == "last" else best + last:
        if candidate and Path(candidate).is_file():
            return candidate
    raise FileNotFoundError(
        f"stage 1 ({run_dir}) wrote no checkpoint, so stage 2 has no autoencoder: keep the model_checkpoint "
        "callback (callbacks=default) with save_last=true, or pass --autoencoder-ckpt PATH"
    )


def run(
    overrides: Sequence[str] = (),
    stage1_checkpoint: str = "last",
    autoencoder_ckpt: str | Path | None = None,
) -> dict[str, dict]:
    """Train stage 1, then stage 2 on stage 1's checkpoint.

    Args:
        overrides: Hydra overrides passed to both stages (not ``model=``).
        stage1_checkpoint: ``"last"`` (the reference) or ``"best"`` (best ``val/dice``) stage-1 checkpoint.
        autoencoder_ckpt: skip stage 1 and use this stage-1 checkpoint.

    Returns:
        ``{"stage1_autoencoder": metrics, "stage2_predictor": metrics}`` as returned by
        :func:`xray3d.pipeline.train.run` (stage 1 missing when skipped).

    Raises:
        ValueError: on a ``model=`` override or an unknown ``stage1_checkpoint``; also when the stage-1
            checkpoint does not fit the predictor (raised while building stage 2, with the fix).
        FileNotFoundError: when there is no stage-1 checkpoint.
    """
    if stage1_checkpoint not in ("last", "best"):
        raise ValueError(f"stage1_checkpoint must be 'last' or 'best', got {stage1_checkpoint!r}")
    overrides = list(overrides)
    # Compose both stages first so a typo fails now, not after stage 1 has trained.
    root = _runs_root(compose_stage("stage1_autoencoder", overrides), overrides).resolve()  # absolute paths
    compose_stage("stage2_predictor", overrides)
    results: dict[str, dict] = {}
    try:
        if autoencoder_ckpt is None:
            stage1_dir = root / "stage1_autoencoder"
            results["stage1_autoencoder"] = _run_stage("stage1_autoencoder", overrides, stage1_dir)
            autoencoder_ckpt = _stage1_checkpoint(
                results["stage1_autoencoder"], stage1_checkpoint, stage1_dir
            )
        results["stage2_predictor"] = _run_stage(
            "stage2_predictor",
            overrides,
            root / "stage2_predictor",
            {"model.net.autoencoder_ckpt": str(Path(autoencoder_ckpt).resolve())},
        )
    finally:
        GlobalHydra.instance().clear()
    print(f"TL-embedding runs in {root}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m xray3d.pipeline.two_stage [--stage1-checkpoint best] [overrides...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m xray3d.pipeline.two_stage",
        description="Train both TL-embedding stages in order (stage 2 uses stage 1's checkpoint).",
    )
    parser.add_argument("--stage1-checkpoint", choices=["last", "best"], default="last")
    parser.add_argument("--autoencoder-ckpt", default=None, help="skip stage 1 and use this checkpoint")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for both stages, e.g. data=... debug=limit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run(args.overrides, args.stage1_checkpoint, args.autoencoder_ckpt)


if __name__ == "__main__":
    main()
