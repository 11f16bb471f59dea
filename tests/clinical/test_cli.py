"""xray3d-measure: one mask file -> JSON, non-zero exit with a reason when it cannot measure."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from xray3d.clinical.base import ClinicalError
from xray3d.clinical.cli import anatomies, main, measure_file

from ..conftest import SHARED_DATA

MASKS = SHARED_DATA / "xrayto3d-masks"


def test_every_anatomy_has_a_measurement_config():
    assert anatomies() == ["femur", "hip", "rib", "vertebra"]


@pytest.mark.skipif(not (MASKS / "s0015_femur_left_msk_gt.nii.gz").is_file(), reason="needs ../shared/data")
def test_measure_a_real_femur_with_its_true_spacing(capsys, tmp_path):
    path = MASKS / "s0015_femur_left_msk_gt.nii.gz"  # header says 1.5 mm, the true spacing is 1.0 mm
    assert (
        main([str(path), "--anatomy", "femur", "--spacing-mm", "1.0", "--out", str(tmp_path / "p.json")]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads((tmp_path / "p.json").read_text())
    assert out["spacing_mm"] == pytest.approx([1.0, 1.0, 1.0])
    params = out["parameters"]
    assert 18 < params["head_radius_mm"] < 30 and 110 < params["neck_shaft_angle_deg"] < 150
    # the head centre lies inside the file's world box (points are world coordinates of the file)
    img = nib.load(path)
    affine = img.affine.copy()
    affine[:3, :3] /= 1.5
    corners = np.array([[i, j, k, 1] for i in (0, 127) for j in (0, 127) for k in (0, 127)]) @ affine.T
    centre = np.array(params["head_centre_xyz_mm"])
    assert (corners[:, :3].min(0) <= centre).all() and (centre <= corners[:, :3].max(0)).all()
    # with its wrong header spacing the head is 1.5x larger: out of the anatomical range, or measured so
    try:
        wrong = measure_file(path, "femur")["parameters"]["head_radius_mm"]
        assert wrong == pytest.approx(1.5 * params["head_radius_mm"], rel=0.05)
    except ClinicalError as exc:
        assert any(w in str(exc) for w in ("spacing", "border", "ambiguous"))


def test_empty_mask_unknown_anatomy_and_missing_label_exit_1(tmp_path, capsys):
    path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.uint8), np.eye(4)), path)
    assert main([str(path), "--anatomy", "vertebra"]) == 1
    err = json.loads(capsys.readouterr().err)
    assert err["anatomy"] == "vertebra" and "0 foreground voxels" in err["error"]
    assert main([str(path), "--anatomy", "skull"]) == 1
    assert "unknown anatomy 'skull'" in json.loads(capsys.readouterr().err)["error"]
    assert main([str(path), "--anatomy", "femur", "--label", "3"]) == 1
    assert "label 3 does not occur" in json.loads(capsys.readouterr().err)["error"]
    assert main([str(tmp_path / "missing.nii.gz"), "--anatomy", "femur"]) == 1
    assert "missing.nii.gz" in json.loads(capsys.readouterr().err)["error"]


@pytest.mark.skipif(
    not (MASKS / "sub-verse004_vert-23-seg-vert_msk.nii.gz").is_file(), reason="needs ../shared/data"
)
def test_convention_option_selects_the_reference_definitions(capsys):
    path = str(MASKS / "sub-verse004_vert-23-seg-vert_msk.nii.gz")
    assert main([path, "--anatomy", "vertebra", "--convention", "reference"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["convention"] == "reference"
    assert out["parameters"]["spinous_process_angle_deg"] == pytest.approx(138.60, abs=1.0)  # published
    assert main([path, "--anatomy", "vertebra"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["convention"] == "xray3d" and out["parameters"]["spinous_process_angle_deg"] < 90.0


def test_unknown_or_unsupported_convention_exits_1_naming_the_option(tmp_path, capsys):
    path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.uint8), np.eye(4)), path)
    assert main([str(path), "--anatomy", "vertebra", "--convention", "mine"]) == 1
    err = json.loads(capsys.readouterr().err)["error"]
    assert "--convention='mine'" in err and "valid values: xray3d, reference" in err
    assert main([str(path), "--anatomy", "femur", "--convention", "reference"]) == 1
    assert "has only the 'xray3d' convention" in json.loads(capsys.readouterr().err)["error"]


def test_hydra_override_reaches_the_measurement_and_bad_values_fail_clearly():
    """``data.clinical.convention=reference`` (the clinical group sits under ``data``) reaches the measure
    callable, so ground-truth caches key on it; an unknown value stops the run with the option named."""
    import hydra
    from hydra import compose, initialize_config_dir

    from xray3d import CONF_DIR
    from xray3d.clinical.base import ConventionError
    from xray3d.clinical.cache import measure_key

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        default = compose(config_name="train", overrides=["data=verse2019"])
        ref = compose(config_name="train", overrides=["data=verse2019", "data.clinical.convention=reference"])
        bad = compose(config_name="train", overrides=["data=verse2019", "data.clinical.convention=mine"])
    m_default, m_ref = (hydra.utils.instantiate(c.data.clinical) for c in (default, ref))
    assert m_default.keywords["convention"] == "xray3d" and m_ref.keywords["convention"] == "reference"
    assert measure_key(m_default) != measure_key(m_ref)
    with pytest.raises(ConventionError, match=r"data.clinical.convention='mine'.*xray3d, reference"):
        hydra.utils.instantiate(bad.data.clinical)(np.ones((8, 8, 8), bool), np.eye(4))
