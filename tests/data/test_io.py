"""Atomic writes of xray3d/data/io.py."""

from __future__ import annotations


def test_atomic_writes_are_readable_like_ordinary_files(tmp_path):
    """Result files get open()'s mode (0666 minus the umask), not mkstemp's 0600."""
    import os
    import stat

    import nibabel as nib
    import numpy as np

    from xray3d.data.io import save_nifti_atomic, write_json_atomic

    umask = os.umask(0o022)
    os.umask(umask)
    write_json_atomic({"a": 1}, tmp_path / "summary.json")
    save_nifti_atomic(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "m.nii.gz")
    (tmp_path / "plain.txt").write_text("x")
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    for name in ("summary.json", "m.nii.gz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected
