"""What a training run directory records about itself (kept light: used by config resolvers)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["train_choice", "ckpt_model_name"]


def _train_config_of(ckpt: Path) -> Path | None:
    """The Hydra config saved by the training run that wrote ``ckpt`` (``<run>/checkpoints/x.ckpt``)."""
    for parent in list(ckpt.parents)[:3]:
        candidate = parent / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def train_choice(ckpt: Path, group: str) -> str | None:
    """The config-group choice (e.g. ``model`` -> ``"unet"``) of the training run that wrote ``ckpt``."""
    cfg_path = _train_config_of(ckpt)
    hydra_yaml = cfg_path.parent / "hydra.yaml" if cfg_path is not None else None
    if hydra_yaml is None or not hydra_yaml.is_file():
        return None
    choice = OmegaConf.select(OmegaConf.load(hydra_yaml), f"hydra.runtime.choices.{group}", default=None)
    return str(choice) if choice is not None else None


def ckpt_model_name(ckpt_path: str | None, choice: str, use_train_model: bool = True) -> str:
    """The model config name to file an evaluation under: the training run's choice for ``ckpt_path``
    (``eval.py`` takes the network from there), else the command line's ``model=`` choice."""
    if ckpt_path and use_train_model:
        try:
            found = train_choice(Path(str(ckpt_path)), "model")
        except Exception:  # an unreadable run config: fall back to the choice
            found = None
        if found:
            return found
    return str(choice)
