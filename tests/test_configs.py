"""Every data x model config composes and instantiates; typos fail loudly."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException

from xray3d import CONF_DIR

from .conftest import compose_cfg

DATA = sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml"))
MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_compose_and_instantiate(data, model, tmp_path):
    cfg = compose_cfg("train", [f"data={data}", f"model={model}"], tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model, optimizer=hydra.utils.instantiate(cfg.optimizer))
    assert dm.grid_size == cfg.data.grid_size
    assert sum(p.numel() for p in module.parameters()) > 0


@pytest.mark.parametrize("extra", ["optimizer=adamw", "optimizer=sgd", "scheduler=cosine", "trainer=cpu"])
def test_optional_groups_compose(extra, tmp_path):
    cfg = compose_cfg("train", ["model=attention_unet", extra], tmp_path)
    opt = hydra.utils.instantiate(cfg.optimizer)
    assert callable(opt)


def test_eval_config_requires_a_checkpoint(tmp_path):
    cfg = compose_cfg("eval", [], tmp_path)
    from omegaconf import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue):
        _ = cfg.ckpt_path


@pytest.mark.parametrize(
    "override, match",
    [("model=not_a_model", "not_a_model"), ("data.bogus_option=1", "bogus_option"), ("data=nope", "nope")],
)
def test_typos_are_rejected_with_the_name(override, match, tmp_path):
    with pytest.raises(ConfigCompositionException, match=match):
        compose_cfg("train", [override], tmp_path)
