"""xray3d-prepare <dataset>: one dispatcher over the per-dataset preparers (names = conf/data configs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from xray3d import CONF_DIR
from xray3d.data.prepare_cli import PREPARERS, main
from xray3d.testing import FixtureUnavailable


def test_every_dataset_name_is_a_data_config():
    configs = {p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml")}
    assert set(PREPARERS) == configs


def test_unknown_dataset_and_help(capsys):
    assert main(["verse2020"]) == 2
    assert "unknown dataset 'verse2020'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "rsna_cervical" in capsys.readouterr().out


def test_dispatch_prepares_verse_from_its_real_fixture(tmp_path, capsys):
    from xray3d.testing.verse import write_verse_fixture

    try:
        write_verse_fixture(tmp_path / "raw", subjects=[f"sub-verse{n:03d}" for n in range(4, 11)])
    except FixtureUnavailable as exc:
        pytest.skip(str(exc))
    assert main(["verse2019", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")]) == 0
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    # T9..L5 of the real sample, 7 copies: every split filled
    assert len(manifest) == 7 * 9 and set(manifest["anatomy"]) == {"vertebra"}
    # the test split's ground truths were measured into the clinical cache (one entry per test vertebra)
    n_test = int((manifest["split"] == "test").sum())
    assert f"ground truths of the test split: {n_test} (0 already cached" in capsys.readouterr().out
    entries = list((tmp_path / "out" / ".clinical_cache").glob("*/*.json"))
    # the copies' masks are identical, so they share one entry per level
    assert len(entries) == len(set(manifest.loc[manifest["split"] == "test", "level"])) > 0


def test_no_measure_gt_skips_the_clinical_cache(tmp_path, capsys):
    from xray3d.testing.verse import write_verse_fixture

    try:
        write_verse_fixture(tmp_path / "raw")
    except FixtureUnavailable as exc:
        pytest.skip(str(exc))
    argv = ["verse2019", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--no-measure-gt"]
    assert main(argv) == 0
    assert (tmp_path / "out" / "manifest.csv").is_file()
    assert not (tmp_path / "out" / ".clinical_cache").exists()
