"""TL-embedding in one command: stage 1 (autoencoder) then stage 2 (predictor on stage 1's checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from xray3d.models.nets.tl_embedding import TLPredictor
from xray3d.pipeline import two_stage


@pytest.fixture
def overrides(tmp_path: Path, embedded_small: Path):
    yield [
        f"paths.log_dir={tmp_path / 'logs'}",
        f"data.data_dir={embedded_small}",
        "data.prepare=null",
        "debug=limit",
        "trainer.max_steps=2",
        "data.train_samples_per_epoch=4",  # 2 batches: one validation, so a best checkpoint exists
        "logger=csv",
    ]
    GlobalHydra.instance().clear()


def test_both_stages_run_in_order(overrides: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(
        tmp_path
    )  # a relative log dir, as in `paths.log_dir=logs`: the paths still come out absolute
    overrides = ["paths.log_dir=logs" if o.startswith("paths.log_dir=") else o for o in overrides]
    results = two_stage.run(overrides)
    stage1, stage2 = results["stage1_autoencoder"], results["stage2_predictor"]
    run1, run2 = Path(stage1["paths"]["run_dir"]), Path(stage2["paths"]["run_dir"])
    ae_ckpt = run1 / "checkpoints" / "last.ckpt"  # the reference's choice
    assert ae_ckpt.is_file() and run1.name == "stage1_autoencoder"
    assert run2.parent == ae_ckpt.parents[2] and run2.name == "stage2_predictor"
    assert run2.parent.is_relative_to(tmp_path / "logs" / "tl_embedding" / "embedded_vertebra")
    assert Path(stage2["paths"]["best_checkpoint"]).is_file()
    printed = [v for r in (stage1, stage2) for v in r["paths"].values() if isinstance(v, str) and "/" in v]
    assert printed and all(Path(v).is_absolute() for v in printed)  # not a mix of relative and absolute
    assert 0.0 <= stage2["test/dice"] <= 1.0

    saved = OmegaConf.load(run2 / ".hydra" / "config.yaml")  # what eval.py reads
    assert saved.model.net._target_.endswith("TLPredictor")
    assert Path(saved.model.net.autoencoder_ckpt) == ae_ckpt.resolve()
    assert saved.trainer.max_steps == 2 and saved.optimizer.lr == pytest.approx(2e-4)
    stage1_cfg = OmegaConf.load(ae_ckpt.parents[1] / ".hydra" / "config.yaml")
    assert list(stage1_cfg.model.inputs) == ["mask"] and stage1_cfg.model.input_noise_std == pytest.approx(
        0.1
    )

    # stage 2 trained only the predictor: its decoder equals stage 1's decoder
    ae_state = torch.load(ae_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    state2 = torch.load(run2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    decoder_keys = [k for k in state2 if k.startswith("net.decoder.")]
    assert decoder_keys and all(torch.equal(state2[k], ae_state[k]) for k in decoder_keys)


def test_missing_autoencoder_checkpoint_says_run_stage1(overrides: list[str], tmp_path: Path) -> None:
    with pytest.raises(Exception, match="run stage 1 first") as info:
        two_stage.run(overrides, autoencoder_ckpt=tmp_path / "nope.ckpt")
    assert "nope.ckpt" in str(info.value)


def test_incompatible_autoencoder_checkpoint_is_rejected(overrides: list[str], tmp_path: Path) -> None:
    wrong = tmp_path / "ae32.pt"  # an autoencoder for a 32^3 grid; the data grid is 64^3
    torch.save(TLPredictor(img_size=32).decoder.state_dict(), wrong)
    with pytest.raises(Exception, match="does not match TLAutoEncoder") as info:
        two_stage.run(overrides, autoencoder_ckpt=wrong)
    assert "run stage 1 first" in str(info.value)


def test_model_override_and_typos_fail_before_training(overrides: list[str]) -> None:
    with pytest.raises(ValueError, match="model="):
        two_stage.run([*overrides, "model=unet"])
    with pytest.raises(Exception, match="bogus_key"):
        two_stage.run([*overrides, "trainer.bogus_key=1"])


def test_tl_predictor_without_stage1_is_refused_by_trainer_fit(compose_train):
    """``train.py model=tl_predictor`` without a stage-1 checkpoint: Trainer.fit refuses before any step."""
    from xray3d.pipeline import train

    cfg = compose_train("model=tl_predictor", "trainer.max_steps=2", "logger=none", "test=false")
    with pytest.raises(ValueError, match="stage-1 autoencoder"):
        train.run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()
