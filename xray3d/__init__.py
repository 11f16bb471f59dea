"""xray3d: biplanar X-ray (AP + LAT) to 3D bone shape reconstruction."""

from pathlib import Path

__version__ = "0.1.0"

#: the Hydra config directory, shipped inside the package (``xray3d/conf``; the repository's top-level
#: ``conf`` is a link to it), so a plain ``pip install`` has it
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


def _wandb_offline() -> bool:
    """``logger.wandb.offline``: W&B offline by default (no account, no network), unless the user set
    ``WANDB_MODE`` (then honoured as W&B documents it; Lightning's ``offline=True`` would overwrite the
    variable) or ``XRAY3D_WANDB_OFFLINE=false``."""
    import os

    if os.environ.get("WANDB_MODE"):
        return False
    return os.environ.get("XRAY3D_WANDB_OFFLINE", "true").strip().lower() not in ("0", "false", "no")


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("xray3d_wandb_offline"):
        OmegaConf.register_new_resolver("xray3d_wandb_offline", _wandb_offline)
    if not OmegaConf.has_resolver("xray3d_model_name"):
        # ${xray3d_model_name:<ckpt_path>,<model choice>,<use_train_model>}: run names of evaluations
        OmegaConf.register_new_resolver("xray3d_model_name", lambda *a: _model_name(*a))


def _model_name(ckpt_path: object, choice: str, use_train_model: object = True) -> str:
    from xray3d.utils.runinfo import ckpt_model_name

    use = str(use_train_model).lower() not in ("false", "0", "no")
    return ckpt_model_name(
        None if ckpt_path in (None, "", "None", "null", "???") else str(ckpt_path), choice, use
    )


_register_resolvers()
