"""Measure a prepared dataset's ground-truth clinical parameters once, before any evaluation.

``xray3d-measure-gt data=totalseg_femur data.data_dir=/data/totalseg_femur [splits=[test]] [workers=4]``

The ground truth of a test case is the same for every model, checkpoint, robustness angle and
domain-shift run, so its measurement belongs to the dataset, not to an evaluation: this command fills
``<data_dir>/.clinical_cache`` (:class:`~xray3d.clinical.cache.MeasurementCache`, the cache the test-time
report reads) for the chosen splits. Afterwards every evaluation measures only its predictions
(``experiments/benchmarks/eval_per_case.py``: "eval s, GT cached"). ``xray3d-prepare`` runs it on the
test split after preparing a dataset (``--no-measure-gt`` skips it).

Already cached masks are skipped (an interrupted run resumes); a ground truth that cannot be measured is
cached as a failure with its reason, listed, and does not stop the others (samples whose files cannot
be read are skipped by the dataset loader, with their reason logged). Masks are read one at a time from
the dataset's memory-mapped array cache, so memory does not grow with the split. Prints one line per
split.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import hydra
import numpy as np
from omegaconf import DictConfig

from xray3d import CONF_DIR
from xray3d.clinical.base import ClinicalError
from xray3d.clinical.cache import MeasurementCache, dataset_cache_dir

__all__ = ["measure_ground_truths", "main"]

log = logging.getLogger(__name__)


def _measure_one(cache: MeasurementCache, mask: np.ndarray, affine: np.ndarray) -> str | None:
    """Measure and cache one ground truth; the failure reason, or None."""
    try:
        cache(mask, affine)
    except ClinicalError as exc:
        return str(exc)
    return None


def measure_ground_truths(datamodule, splits: Sequence[str] = ("test",), workers: int = 0) -> dict[str, dict]:
    """Fill ``<data_dir>/.clinical_cache`` with the ground-truth measurements of ``splits``.

    Args:
        datamodule: a :class:`~xray3d.data.datamodule.BiplanarDataModule` with ``clinical`` set.
        splits: stages to measure (``"train"``, ``"val"``, ``"test"``: the data config's split lists).
        workers: background processes (0 = in this process).

    Returns:
        Per stage ``{"n": samples, "cached": already there, "measured": ok now, "failed": {id: reason}}``.

    Raises:
        ValueError: the data config has no clinical measurement or an unknown stage is asked for.
    """
    measure = getattr(datamodule, "clinical", None)
    if measure is None:
        raise ValueError(
            "the data config has no clinical measurement (data.clinical is null): nothing to measure"
        )
    unknown = set(splits) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}: choose from train, val, test")
    cache = MeasurementCache(dataset_cache_dir(datamodule.data_dir), measure)
    pool = None
    if workers > 0:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    out: dict[str, dict] = {}
    try:
        for stage in splits:
            ds = datamodule.dataset(stage)
            cached, reasons = 0, {}  # measured now: sample id -> failure reason or None
            first: dict = {}  # cache file -> sample id that measures it in this run
            copies: list[tuple[str, str]] = []  # (sample id, sample id of the identical mask measured now)
            pending: deque = deque()  # (sample id, future) in flight, at most 2 per worker
            for i in range(len(ds)):  # lazily: one mask in memory at a time (plus those in flight)
                # exactly what the test-time report hashes: the mask > 0.5 and the float64 affine
                sid, mask, affine = ds.sample_ids[i], ds.mask_array(i), ds.affine(i)
                path = cache.path(mask, affine)
                if path in first:  # the same mask as an earlier sample of this run: measured once
                    copies.append((sid, first[path]))
                elif path.is_file():
                    cached += 1
                else:
                    first[path] = sid
                    if pool is None:
                        reasons[sid] = _measure_one(cache, mask, affine)
                    else:
                        pending.append((sid, pool.submit(_measure_one, cache, mask, affine)))
                        while len(pending) >= 2 * workers:
                            done_sid, future = pending.popleft()
                            reasons[done_sid] = future.result()
            for done_sid, future in pending:
                reasons[done_sid] = future.result()
            for sid, original in copies:
                reasons[sid] = reasons[original]
            failed = {sid: r for sid, r in reasons.items() if r is not None}
            out[stage] = {
                "n": cached + len(reasons),
                "cached": cached,
                "measured": len(reasons) - len(failed),
                "failed": failed,
            }
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="measure_gt")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``xray3d-measure-gt``)."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    result = measure_ground_truths(datamodule, tuple(cfg.splits), int(cfg.workers))
    for stage, r in result.items():
        print(
            f"{stage}: {r['n']} ground truths, {r['cached']} already cached, {r['measured']} measured, "
            f"{len(r['failed'])} not measurable -> {dataset_cache_dir(datamodule.data_dir)}"
        )
        for sid, reason in r["failed"].items():
            print(f"  {sid}: {reason}")


if __name__ == "__main__":
    main()
