"""``xray3d-prepare <dataset> [options]``: one entry point for every dataset preparation.

The dataset names are the ``conf/data`` config names, so ``xray3d-prepare verse2019 --raw R --out O`` is
followed by ``python train.py data=verse2019``. The remaining options go to that dataset's preparer
(``xray3d-prepare <dataset> --help`` lists them)::

    xray3d-prepare embedded_vertebra --out data/embedded
    xray3d-prepare totalseg_femur --raw /data/Totalsegmentator_dataset --out data/totalseg_femur --workers 8
    xray3d-prepare verse2019 --raw /data/verse19 --out data/verse2019 --fracture-table appendix.xlsx
    xray3d-prepare ctpelvic1k --raw /data/CTPelvic1K --out data/ctpelvic1k
    xray3d-prepare rsna_cervical --raw /data/rsna-2022-cervical-spine-fracture-detection --out data/rsna

After a successful preparation the test split's ground-truth clinical parameters are measured once into
``<out>/.clinical_cache`` (``xray3d-measure-gt``), so evaluations only measure predictions;
``--no-measure-gt`` skips that step.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["PREPARERS", "main"]

#: data config name -> (module whose ``main(argv)`` prepares it, arguments it always gets)
PREPARERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embedded_vertebra": ("xray3d.data.embedded", ()),
    "embedded_rib": ("xray3d.data.embedded", ()),
    "totalseg_femur": ("xray3d.data.sources.totalseg", ("--task", "femur")),
    "totalseg_hip": ("xray3d.data.sources.totalseg", ("--task", "hip")),
    "totalseg_rib": ("xray3d.data.sources.totalseg", ("--task", "rib")),
    "verse2019": ("xray3d.data.sources.verse", ()),
    "ctpelvic1k": ("xray3d.data.sources.ctpelvic1k", ()),
    "rsna_cervical": ("xray3d.data.sources.rsna", ()),
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
    measure_gt = "--no-measure-gt" not in rest
    rest = [a for a in rest if a != "--no-measure-gt"]
    module, fixed = PREPARERS[name]
    code = int(importlib.import_module(module).main([*fixed, *rest]) or 0)
    if code == 0 and measure_gt:
        _measure_test_ground_truths(name, rest)
    return code


def _measure_test_ground_truths(name: str, rest: Sequence[str]) -> None:
    """Measure the prepared test split's ground truths (never fails the preparation: prints why not)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out")
    parser.add_argument("--workers", type=int, default=0)
    args, _ = parser.parse_known_args(list(rest))
    if args.out is None:
        print("ground-truth clinical measurement skipped: no --out given (run xray3d-measure-gt later)")
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from xray3d import CONF_DIR
    from xray3d.clinical.cache import dataset_cache_dir
    from xray3d.pipeline.measure_gt import measure_ground_truths

    overrides = [f"data={name}", f"data.data_dir={args.out}", "data.prepare=null"]
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="measure_gt", overrides=overrides)
        result = measure_ground_truths(instantiate(cfg.data), ("test",), max(args.workers, 0))["test"]
    except Exception as exc:  # e.g. no test split: the preparation itself succeeded
        print(f"ground-truth clinical measurement skipped ({exc}); run xray3d-measure-gt data={name} later")
        return
    finally:
        GlobalHydra.instance().clear()
    print(
        f"ground truths of the test split: {result['n']} ({result['cached']} already cached, "
        f"{result['measured']} measured, {len(result['failed'])} not measurable) in "
        f"{dataset_cache_dir(args.out)}"
    )


if __name__ == "__main__":
    sys.exit(main())
