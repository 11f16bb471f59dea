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


def _nifti(path):
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4)), path)
    return path


def test_load_nifti_names_what_is_wrong_with_a_raw_file_and_the_fix(tmp_path):
    import gzip

    import pytest

    from xray3d.data.io import DataError, load_nifti

    plain = _nifti(tmp_path / "x.nii")
    named_gz = tmp_path / "seg.nii.gz"
    named_gz.write_bytes(plain.read_bytes())
    with pytest.raises(DataError, match=r"uncompressed NIfTI named \.nii\.gz; rename it to seg\.nii"):
        load_nifti(named_gz, "mask", raw=True)
    gz_named_plain = tmp_path / "ct.nii"
    gz_named_plain.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(
        DataError, match=r"gzip-compressed file without a \.gz suffix; rename it to ct\.nii\.gz"
    ):
        load_nifti(gz_named_plain, "CT", raw=True)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(
        DataError, match=r"empty\.nii\.gz: the file is empty \(0 bytes\); the download or extraction"
    ):
        load_nifti(empty, "CT", raw=True)
    html = tmp_path / "page.nii"
    html.write_text("<html>403 Forbidden</html>" * 20)
    with pytest.raises(DataError, match=r"not a NIfTI file \(no NIfTI header; 520 bytes\); replace it"):
        load_nifti(html, "CT", raw=True)
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(gzip.compress(plain.read_bytes())[:40])
    with pytest.raises(DataError, match="corrupt or truncated: download or extract it again") as info:
        load_nifti(truncated, "CT", raw=True)
    assert "re-run the preparation" not in str(info.value)
    # the same problems in a file xray3d wrote: delete it and prepare again
    with pytest.raises(
        DataError, match=r"uncompressed NIfTI named \.nii\.gz; Delete it and re-run the preparation"
    ):
        load_nifti(named_gz, "mask")
    with pytest.raises(DataError, match="corrupt or truncated: Delete it and re-run the preparation step"):
        load_nifti(truncated, "CT")
    assert load_nifti(plain, "CT", raw=True).shape == (2, 2, 2)
    assert load_nifti(_nifti(tmp_path / "ok.nii.gz"), "CT").shape == (2, 2, 2)
