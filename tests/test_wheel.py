"""A plain (non-editable) install works from any folder: the wheel carries conf/, the console scripts run."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_xray3d_train_runs_from_another_folder(tmp_path, embedded_small):
    wheels = tmp_path / "wheels"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
    ]
    subprocess.run([*build, str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("xray3d-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "xray3d" / "conf").rglob("*.yaml")}
    assert expected <= set(names)
    # install the wheel alone into a folder that shadows the editable checkout (dependencies: this env's)
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled"}
    env.pop("XRAY3D_LOG_DIR", None)
    probe = subprocess.run(
        [sys.executable, "-c", "import xray3d; print(xray3d.CONF_DIR)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip().startswith(str(target)), probe.stdout + probe.stderr
    res = subprocess.run(
        [
            str(target / "bin" / "xray3d-train"),
            "debug=fdr",
            f"data.data_dir={embedded_small}",
            "data.prepare=null",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((work / "logs" / "train").rglob("config_resolved.yaml"))  # logs under the working folder
