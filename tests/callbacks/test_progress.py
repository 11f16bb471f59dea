"""Progress display: step-bounded runs read 'step i/N', not 'Epoch k/-2'."""

from __future__ import annotations

from types import SimpleNamespace

from xray3d.callbacks.progress import StepProgressBar


def test_step_bounded_description():
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=1000, global_step=120)
    assert bar._get_train_description(3).strip() == "Epoch 3 (step 120/1000)"
    bar._trainer = SimpleNamespace(max_epochs=10, max_steps=-1, global_step=5)
    assert bar._get_train_description(3).strip() == "Epoch 3/9"
