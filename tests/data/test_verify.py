"""verify_dataset on the real embedded subset and on damaged copies of it."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd

from xray3d.data.verify import main, verify_dataset


def test_prepared_dataset_verifies_clean(embedded_small, capsys):
    report = verify_dataset(embedded_small)
    assert report.ok and report.n_samples == 4, report.errors
    assert main([str(embedded_small)]) == 0
    assert "4 samples checked: 0 errors" in capsys.readouterr().out


def test_each_problem_is_reported_with_what_to_do(embedded_small, tmp_path, capsys):
    root = tmp_path / "ds"
    shutil.copytree(embedded_small, root)
    df = pd.read_csv(root / "manifest.csv")
    rows = {r.level: r for r in df.itertuples()}
    # T1: label values 0/2; T2: empty mask; T5: wrong orientation (RAS affine); T7: truncated CT.
    img = nib.load(root / rows["T1"].mask_path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine), root / rows["T1"].mask_path)
    t2 = nib.load(root / rows["T2"].mask_path)
    nib.save(nib.Nifti1Image(np.zeros(t2.shape, np.uint8), t2.affine), root / rows["T2"].mask_path)
    for key in ("ct_path", "mask_path"):
        p = root / getattr(rows["T5"], key)
        im = nib.load(p)
        nib.save(nib.Nifti1Image(np.asarray(im.dataobj), np.diag([1.5, 1.5, 1.5, 1.0])), p)
    p = root / rows["T7"].ct_path
    p.write_bytes(p.read_bytes()[:1000])
    df.loc[len(df)] = df.iloc[0]  # a duplicated row
    df.to_csv(root / "manifest.csv", index=False)
    report = verify_dataset(root)
    text = "\n".join(report.errors)
    assert not report.ok
    assert "holds labels [0, 2]" in text and "is empty" in text and "expected PIR" in text
    assert "corrupt or truncated" in text and "listed twice" in text
    assert main([str(root)]) == 1
    assert "errors" in capsys.readouterr().out


def test_missing_manifest(tmp_path):
    report = verify_dataset(tmp_path)
    assert not report.ok and "manifest not found" in report.errors[0]


def test_exit_code_on_an_empty_manifest_and_an_incomplete_preparation(embedded_small, tmp_path):
    import json
    import subprocess
    import sys

    def copy(name):
        root = tmp_path / name
        shutil.copytree(embedded_small, root, ignore=shutil.ignore_patterns(".*"))
        return root

    def cli(root):  # the console script's exit code: sys.exit(main())
        code = f"import sys; from xray3d.data.verify import main; sys.exit(main([{str(root)!r}]))"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert cli(embedded_small).returncode == 0
    empty = copy("empty")
    df = pd.read_csv(empty / "manifest.csv")
    df.iloc[:0].to_csv(empty / "manifest.csv", index=False)
    res = cli(empty)
    assert res.returncode == 1 and "lists no samples" in res.stderr
    partial = copy("partial")
    meta = json.loads((partial / "manifest.json").read_text())
    meta["complete"] = False
    meta.setdefault("skipped", []).append(
        {"subject": "s1", "sample_id": "s1_L1", "reason": "x", "failed": True}
    )
    (partial / "manifest.json").write_text(json.dumps(meta))
    res = cli(partial)
    assert res.returncode == 1 and "incomplete" in res.stderr and "s1_L1" in res.stderr
