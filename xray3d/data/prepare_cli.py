"""``xray3d-prepare <dataset> [options]``: one entry point for every dataset preparation.

The dataset names are the ``conf/data`` config names, so ``xray3d-prepare verse2019 --raw R --out O`` is
followed by ``python train.py data=verse2019``. The remaining options go to that dataset's preparer
(``xray3d-prepare <dataset> --help`` lists them)::

    xray3d-prepare embedded_vertebra --out data/embedded
    xray3d-prepare totalseg_femur --raw /data/Totalsegmentator_dataset --out data/totalseg_femur --workers 8
    xray3d-prepare verse2019 --raw /data/verse19 --out data/verse2019 --fracture-table appendix.xlsx
    xray3d-prepare ctpelvic1k --raw /data/CTPelvic1K --out data/ctpelvic1k
    xray3d-prepare rsna_cervical --raw /data/rsna-2022-cervical-spine-fracture-detection --out data/rsna
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["PREPARERS", "main"]

#: data config name -> (module whose ``main(argv)`` prepares it, arguments it always gets)
PREPARERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embedded_vertebra": ("xray3d.data.embedded", ()),
    "embedded_rib": ("xray3d.data.embedded", ()),
    "totalseg_femur": ("xray3d.data.totalseg", ("--task", "femur")),
    "totalseg_hip": ("xray3d.data.totalseg", ("--task", "hip")),
    "totalseg_rib": ("xray3d.data.totalseg", ("--task", "rib")),
    "verse2019": ("xray3d.data.verse", ()),
    "ctpelvic1k": ("xray3d.data.ctpelvic1k", ()),
    "rsna_cervical": ("xray3d.data.rsna", ()),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the dataset's preparer; returns its exit code (2 for an unknown dataset)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("datasets: " + ", ".join(PREPARERS))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in PREPARERS:
        print(f"error: unknown dataset {name!r}; choose one of: {', '.join(PREPARERS)}", file=sys.stderr)
        return 2
    module, fixed = PREPARERS[name]
    code = importlib.import_module(module).main([*fixed, *rest])
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
