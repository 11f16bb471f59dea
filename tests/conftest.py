"""Shared fixtures: W&B off, the real embedded CT prepared once per session, Hydra composition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from xray3d import CONF_DIR  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The project's shared real data (../shared/data from the repository root, or $XRAY3D_SHARED_DATA).
SHARED_DATA = Path(
    os.environ.get("XRAY3D_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

# A small real subset of the embedded dataset: two training, one validation, one test vertebra.
SMALL_LEVELS = ["T1", "T2", "T5", "T7"]


@pytest.fixture(scope="session")
def embedded_small(tmp_path_factory) -> Path:
    """The embedded chest-CT dataset restricted to :data:`SMALL_LEVELS` (real CT, prepared once)."""
    from xray3d.data.embedded import prepare_embedded

    out = tmp_path_factory.mktemp("embedded_small")
    prepare_embedded(out, include_rib=False, levels=SMALL_LEVELS)
    return out


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, data_dir: Path | None = None):
    """Compose a real config as the CLI would, with tmp output and (optionally) a prepared data dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
        if data_dir is not None:
            cfg.data.data_dir = str(data_dir)
            cfg.data.prepare = None
    return cfg


def run_python(args: list[str], cwd: Path, timeout: float = 500) -> subprocess.CompletedProcess:
    """Run ``python <args>`` as a user would (W&B disabled, logs under ``<cwd>/logs``), capturing output."""
    env = {**os.environ, "WANDB_MODE": "disabled", "XRAY3D_LOG_DIR": str(cwd / "logs")}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def compose_train(tmp_path, embedded_small):
    """Factory: compose ``train.yaml`` with overrides on the small real dataset."""

    def _compose(*overrides: str, config_name: str = "train"):
        return compose_cfg(config_name, list(overrides), tmp_path / "run", embedded_small)

    yield _compose
    GlobalHydra.instance().clear()


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_wandb():
    """W&B keeps the mode of its first setup in a process; tests switch WANDB_MODE, so reset it after each."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
