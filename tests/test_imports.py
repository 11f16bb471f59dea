"""Light commands stay light: scoring a folder or measuring a mask does not import Lightning."""

from __future__ import annotations

import subprocess
import sys


def test_score_and_measure_do_not_import_lightning():
    code = (
        "import sys, xray3d.pipeline.score_folder, xray3d.clinical.cli; "
        "sys.exit(any(m.split('.')[0] == 'lightning' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
