"""Reference training settings (spec §4) resolve per anatomy x model: ``experiment=benchmark/<anatomy>``."""

from __future__ import annotations

from pathlib import Path

import pytest

from xray3d import CONF_DIR

from .conftest import compose_cfg

MODELS = [
    "unet",
    "attention_unet",
    "unetr",
    "swinunetr",
    "twod_permute_concat",
    "oned_concat",
    "multiscale_2d_permute_concat",
    "tl_autoencoder",
    "tl_predictor",
]
TL = {"tl_autoencoder": (5000, 2e-4, 8), "tl_predictor": (5000, 2e-4, 8)}
# (max_steps, lr, batch_size): the anatomy default and the per-model exceptions of spec §4.
EXPECTED = {
    "femur": ({"unetr": (4000, 2e-4, 4), "swinunetr": (15000, 2e-4, 1), **TL}, (4000, 2e-3, 8)),
    "hip": (
        {"multiscale_2d_permute_concat": (3000, 2e-3, 4), "swinunetr": (5000, 2e-4, 1), **TL},
        (3000, 2e-3, 8),
    ),
    "rib": (
        {"multiscale_2d_permute_concat": (3000, 2e-3, 4), "swinunetr": (5000, 2e-4, 1), **TL},
        (3000, 2e-3, 8),
    ),
    "vertebra": (TL, (15000, 2e-4, 8)),
}


def test_every_model_config_is_covered() -> None:
    names = {p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml") if not p.stem.startswith("_")}
    assert names == set(MODELS)


DATA_OF = {"vertebra": "verse2019", "femur": "totalseg_femur", "hip": "totalseg_hip", "rib": "totalseg_rib"}


def test_command_line_data_wins_over_the_experiment(tmp_path: Path) -> None:
    overrides = ["experiment=benchmark/vertebra", "model=unet", "data=embedded_vertebra"]
    cfg = compose_cfg("train", overrides, tmp_path)
    assert cfg.hydra.runtime.choices.data == "embedded_vertebra" and cfg.data.batch_size == 8


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("anatomy", sorted(EXPECTED))
def test_reference_settings_per_model(anatomy: str, model: str, tmp_path: Path) -> None:
    cfg = compose_cfg("train", [f"experiment=benchmark/{anatomy}", f"model={model}"], tmp_path)
    exceptions, default = EXPECTED[anatomy]
    steps, lr, batch = exceptions.get(model, default)
    assert cfg.trainer.max_steps == steps
    assert cfg.optimizer.lr == pytest.approx(lr)
    assert cfg.data.batch_size == batch
    assert cfg.hydra.runtime.choices.data == DATA_OF[anatomy]  # the anatomy's public dataset


def test_command_line_still_wins(tmp_path: Path) -> None:
    overrides = ["experiment=benchmark/femur", "model=swinunetr", "trainer.max_steps=7", "data.batch_size=2"]
    cfg = compose_cfg("train", overrides, tmp_path)
    assert (cfg.trainer.max_steps, cfg.data.batch_size, cfg.optimizer.lr) == (7, 2, pytest.approx(2e-4))


@pytest.mark.parametrize(
    "stage, model", [("stage1_autoencoder", "tl_autoencoder"), ("stage2_predictor", "tl_predictor")]
)
def test_tl_embedding_stage_settings(stage: str, model: str, tmp_path: Path) -> None:
    cfg = compose_cfg("train", [f"experiment=tl_embedding/{stage}"], tmp_path)
    assert cfg.hydra.runtime.choices.model == model
    assert (cfg.trainer.max_steps, cfg.optimizer.lr, cfg.data.batch_size) == (5000, pytest.approx(2e-4), 8)


@pytest.mark.parametrize(
    "overrides, loss, ema",
    [
        ([], "monai.losses.DiceCELoss", True),  # the default run: xray3d's tuned recipe
        (["experiment=none"], "monai.losses.DiceLoss", False),  # the model config as it is
        (["experiment=benchmark/vertebra"], "monai.losses.DiceLoss", False),  # the reference's recipe
        (["callbacks.ema=null"], "monai.losses.DiceCELoss", False),
    ],
)
def test_the_default_recipe_and_how_to_leave_it(
    overrides: list[str], loss: str, ema: bool, tmp_path: Path
) -> None:
    cfg = compose_cfg("train", overrides, tmp_path)
    assert cfg.model.loss._target_ == loss and cfg.model.loss.sigmoid is True
    assert (cfg.callbacks.get("ema") is not None) == ema
    if not overrides:
        assert cfg.hydra.runtime.choices.experiment == "default_recipe"
        assert list(cfg.data.augment.scale) == [0.9, 1.5] and len(cfg.data.val_variants) == 3
