"""The datamodule on the real CT: batches, on-device rendering, augmentation only in training."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from xray3d.data.datamodule import BiplanarDataModule
from xray3d.data.io import DataError
from xray3d.data.projection import BiplanarProjector


@pytest.fixture
def dm(embedded_small):
    d = BiplanarDataModule(str(embedded_small), BiplanarProjector(), batch_size=2, train_samples_per_epoch=6)
    d.prepare_data()
    d.setup("fit")
    return d


def test_batches_and_views(dm):
    batch = next(iter(dm.train_dataloader()))
    assert batch["ct"].shape == (2, 1, 64, 64, 64) and batch["mask"].shape == (2, 1, 64, 64, 64)
    out = dm.render(batch, augment=False)
    assert out["ap"].shape == (2, 1, 64, 64) and out["lat"].shape == (2, 1, 64, 64)
    assert 0.0 <= float(out["ap"].min()) and float(out["ap"].max()) <= 1.0
    assert len(list(dm.train_dataloader())) == 3  # 6 samples per epoch, batch 2


def test_augmentation_is_random_in_training_and_fixed_otherwise(dm):
    ds = dm.dataset("val")
    batch = default_collate([ds[0]])
    fixed1 = dm.render(dict(batch), augment=False)
    fixed2 = dm.render(dict(batch), augment=False)
    assert torch.equal(fixed1["lat"], fixed2["lat"])
    aug1 = dm.render(dict(batch), augment=True)
    aug2 = dm.render(dict(batch), augment=True)
    assert not torch.allclose(aug1["lat"], aug2["lat"])
    # A few degrees of pose change keeps the image recognisably the same.
    c = torch.corrcoef(torch.stack([aug1["ap"].flatten(), fixed1["ap"].flatten()]))[0, 1]
    assert c > 0.9


def test_missing_dataset_without_preparer(tmp_path):
    d = BiplanarDataModule(str(tmp_path), BiplanarProjector())
    with pytest.raises(DataError, match="no manifest"):
        d.prepare_data()


def test_wrong_anatomy_is_an_error(embedded_small):
    d = BiplanarDataModule(str(embedded_small), BiplanarProjector(), anatomy="femur")
    with pytest.raises(DataError, match="data.anatomy"):
        d.setup("fit")


def test_argument_validation(embedded_small):
    with pytest.raises(ValueError, match="batch_size"):
        BiplanarDataModule(str(embedded_small), BiplanarProjector(), batch_size=0)


def test_after_transfer_hook_augments_only_while_training(dm):
    from types import SimpleNamespace

    batch = default_collate([dm.dataset("val")[0]])
    dm.trainer = SimpleNamespace(training=False)
    a = dm.on_after_batch_transfer(dict(batch), 0)
    b = dm.on_after_batch_transfer(dict(batch), 0)
    assert torch.equal(a["ap"], b["ap"]) and torch.equal(a["lat"], b["lat"])
    dm.trainer = SimpleNamespace(training=True)
    c = dm.on_after_batch_transfer(dict(batch), 0)
    assert not torch.equal(a["lat"], c["lat"])


def test_validation_variants_are_scored_as_their_own_cases_through_trainer_validate(compose_train):
    """``data.val_variants`` adds re-sized / mirrored copies of each validation case, rendered from the
    changed anatomy and scored against the changed mask (Trainer.validate, as in a training run)."""
    import hydra
    import lightning as L

    variants = "data.val_variants=[{scale:1.25},{scale:[1.0,1.0,1.2],flip_lr:true}]"
    cfg = compose_train("debug=limit", variants)
    dm = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model, optimizer=hydra.utils.instantiate(cfg.optimizer))
    seen: dict[str, tuple[float, torch.Tensor]] = {}

    class Spy(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            for i, sid in enumerate(batch["sample_id"]):
                seen[sid] = (float(batch["mask"][i].sum()), batch["ap"][i].clone())

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[Spy()])
    trainer.validate(model, datamodule=dm)
    base = "chestct_vert-T5"
    ids = {r["sample_id"] for r in model.case_rows["val"]}
    assert ids == {base, f"{base}@x1.25", f"{base}@x1.00-1.00-1.20+mirror"} == set(seen)
    volume = seen[base][0]
    assert seen[f"{base}@x1.25"][0] == pytest.approx(volume * 1.25**3, rel=0.12)
    assert seen[f"{base}@x1.00-1.00-1.20+mirror"][0] == pytest.approx(volume * 1.2, rel=0.12)
    # the views were rendered from the changed CT, not the original one
    assert not torch.allclose(seen[base][1], seen[f"{base}@x1.25"][1])
    assert "val/dice" in trainer.callback_metrics


def test_bad_validation_variants_name_the_option(embedded_small):
    for bad, match in (([{"scale": 0}], "scale must be > 0"), ([{"zoom": 2}], "unknown keys"), ([{}], "changes")):
        with pytest.raises(ValueError, match=match) as err:
            BiplanarDataModule(str(embedded_small), BiplanarProjector(), val_variants=bad)
        assert "data.val_variants[0]" in str(err.value)
