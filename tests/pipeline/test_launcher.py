"""Cluster sweeps: submitit launchers (local / SLURM), skip-or-resume of run dirs, Optuna search."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from xray3d import CONF_DIR
from xray3d.pipeline.resume import FINISHED_FILE

from ..conftest import run_python

ROOT = Path(__file__).resolve().parents[2]
RUNS = ["0_embedded_vertebra_unet", "1_embedded_vertebra_oned_concat"]


def _fast(data_dir: Path, max_steps: int = 1) -> list[str]:
    """Overrides for a run of a few seconds: one step per epoch (validation and last.ckpt every step)."""
    return [
        f"data.data_dir={data_dir}",
        "data.prepare=null",
        "debug=limit",
        "logger=none",
        "callbacks.images=null",
        "callbacks.metrics_report.clinical=false",
        "callbacks.metrics_report.plots=false",
        f"trainer.max_steps={max_steps}",
        "data.train_samples_per_epoch=2",
        "data.batch_size=2",
    ]


def _sweep(sweep_dir: Path, data_dir: Path, cwd: Path):
    args = [str(ROOT / "train.py"), "-m", "hydra/launcher=local", "model=unet,oned_concat"]
    return run_python([*args, f"hydra.sweep.dir={sweep_dir}", *_fast(data_dir)], cwd, timeout=300)


def _step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def _job_logs(sweep_dir: Path) -> str:
    """stdout + stderr of every submitit job of the sweep (Lightning's messages go to stderr)."""
    return "\n".join(p.read_text() for p in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, embedded_small) -> Path:
    """A 2-job sweep through submitit's local executor, as a user runs it (the first run: ~60 s)."""
    cwd = tmp_path_factory.mktemp("sweep_cwd")
    sweep_dir = cwd / "sweep"
    res = _sweep(sweep_dir, embedded_small, cwd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in res.stdout
    return sweep_dir


def _copy(sweep: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sweep"
    shutil.copytree(sweep, dst, ignore=shutil.ignore_patterns(".submitit"))
    return dst


def test_local_launcher_sweep_writes_runs_and_aggregates(sweep, tmp_path):
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == RUNS
    assert list((sweep / ".submitit").glob("*/*_result.pkl")), "jobs did not run through submitit"
    for name in RUNS:
        run = sweep / name
        assert _step(run / "checkpoints" / "last.ckpt") == 1
        summary = json.loads((run / "metrics" / "summary.json").read_text())
        assert summary["n_cases"] == 1 and summary["labels"]["model"] == name.split("_", 3)[-1]
        done = json.loads((run / FINISHED_FILE).read_text())
        assert 0.0 <= done["metrics"]["test/dice"] <= 1.0 and done["metrics"]["paths"]["run_dir"] == str(run)
    res = run_python(["-m", "xray3d.pipeline.aggregate", str(sweep), "--n-boot", "20"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    table = (sweep / "aggregate" / "benchmark_table.md").read_text()
    assert "unet" in table and "oned_concat" in table


def test_rerun_sweep_skips_finished_and_resumes_unfinished(sweep, tmp_path, embedded_small):
    sweep_dir = _copy(sweep, tmp_path)
    done, unfinished = sweep_dir / RUNS[0], sweep_dir / RUNS[1]
    (unfinished / FINISHED_FILE).unlink()  # as if the job was killed after its last checkpoint
    marker = (done / FINISHED_FILE).read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (done / "checkpoints").iterdir()}
    last_unfinished = unfinished / "checkpoints" / "last.ckpt"
    last_mtime = last_unfinished.stat().st_mtime_ns

    res = _sweep(sweep_dir, embedded_small, tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    # the finished run: skipped, nothing trained or rewritten
    assert "already finished" in (done / "train.log").read_text()
    assert (done / FINISHED_FILE).read_text() == marker
    assert {p: p.stat().st_mtime_ns for p in (done / "checkpoints").iterdir()} == mtimes
    # the unfinished run: resumed from its last.ckpt (at max_steps already, so only tested), then marked
    assert f"resuming {unfinished} from {last_unfinished}" in (unfinished / "train.log").read_text()
    assert f"Restoring states from the checkpoint path at {last_unfinished}" in _job_logs(sweep_dir)
    assert last_unfinished.stat().st_mtime_ns == last_mtime and _step(last_unfinished) == 1
    assert json.loads((unfinished / FINISHED_FILE).read_text())["metrics"]["test/dice"] >= 0.0


def test_unfinished_run_dir_continues_training_from_last_checkpoint(sweep, tmp_path, embedded_small):
    run = _copy(sweep, tmp_path) / RUNS[0]
    (run / FINISHED_FILE).unlink()
    last = run / "checkpoints" / "last.ckpt"
    args = [str(ROOT / "train.py"), f"hydra.run.dir={run}", "model=unet", "test=false"]
    res = run_python([*args, *_fast(embedded_small, max_steps=2)], tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in res.stderr
    assert _step(last) == 2  # global_step continued from 1, one more step trained
    assert (run / FINISHED_FILE).is_file()


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_composes_and_tracks_trainer_devices(tmp_path, monkeypatch):
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    overrides = [
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=abc",
        "hydra.launcher.timeout_min=600",
        "+hydra.launcher.additional_parameters.mail-type=END",
        "trainer.devices=4",
        "++trainer.num_nodes=2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    cfg = _compose(overrides)
    GlobalHydra.instance().clear()
    own = yaml.safe_load((Path(CONF_DIR) / "hydra" / "launcher" / "slurm.yaml").read_text())
    assert set(own) - {"defaults"} <= {f.name for f in fields(SlurmQueueConf)}, "unknown launcher key"
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu", "abc", 600)
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0

    # the sbatch script submitit would submit, built the way the launcher does (no SLURM needed)
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    plugin = instantiate(OmegaConf.merge(launcher, {"name": "train"}))
    assert plugin.params["gpus_per_node"] == 4 and plugin.params["tasks_per_node"] == 4
    params = dict(plugin.params)
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=tmp_path, slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    generic = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name"}
    executor.update_parameters(
        **{k if k in generic | {"stderr_to_stdout"} else f"slurm_{k}": v for k, v in params.items()}
    )
    script = executor._executor._make_submission_file_text("python -u job.py", "uid")
    for line in (
        "--partition=gpu",
        "--account=abc",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--nodes=2",
        "--time=600",
        "--signal=USR2@120",
        "--mail-type=END",
    ):
        assert f"#SBATCH {line}" in script, line


def test_local_launcher_and_optuna_search_compose(tmp_path):
    cfg = _compose(["hydra/launcher=local", f"hydra.sweep.dir={tmp_path}"])
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.LocalLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.launcher.gpus_per_node == cfg.trainer.devices
    cfg = _compose(["hparams_search=unet_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/dice" and sweeper.sampler.seed is not None
    # every searched key exists: compose with one value of each
    values = {"choice(adam, adamw)": "adamw", "tag(log, interval(5e-5, 5e-3))": "1e-4"}
    for key, space in sweeper.params.items():
        value = values.get(space) or space[space.index("(") + 1 :].split(",")[0].strip()
        assert OmegaConf.select(_compose(["hparams_search=unet_optuna", f"{key}={value}"]), key) is not None
    GlobalHydra.instance().clear()


def test_optuna_search_runs_two_trials(tmp_path, embedded_small):
    sweep_dir = tmp_path / "optuna"
    args = [str(ROOT / "train.py"), "hparams_search=unet_optuna", "hydra.sweeper.n_trials=2"]
    res = run_python([*args, f"hydra.sweep.dir={sweep_dir}", "test=false", *_fast(embedded_small)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert 0.0 <= result["best_value"] <= 1.0 and "optimizer.lr" in result["best_params"]
    assert "data.batch_size" not in result["best_params"]  # fixed on the command line
    assert len(list(sweep_dir.glob("*_embedded_vertebra_unet/.finished.json"))) == 2
