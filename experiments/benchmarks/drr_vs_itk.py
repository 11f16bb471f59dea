"""Benchmark xray3d's DRR renderer against ITK's compiled ray caster on the same real CT ROIs.

For every ROI of the manifest (PIR NIfTI files in HU) both renderers produce the AP and LAT DRRs of the
reference geometry (spec §2.3): cone beam, source 1000 mm from the ROI centre, flat detector through the
ROI centre, 1 mm pixels, N = ROI size in mm (96 px for the 96 mm vertebra ROIs). Compared are the raw
detector images (no resize, no normalisation):

* **xray3d**: ``BiplanarProjector(renderer="trilinear", normalize=False, output_px=N)``; for reference also
  diffdrr's exact ``renderer="siddon"`` (timed only on the first ``--siddon-repeats`` repeats).
* **ITK**: ``itk.RayCastInterpolateImageFunction`` (threshold 0, focal point = the xray3d source) driven by
  ``itk.ResampleImageFilter`` whose output is the detector plane: an N x N x 1 image whose pixel centres are
  exactly the xray3d detector pixel centres (``BiplanarProjector.ray_geometry``), converted RAS -> LPS.

Facts the ITK side relies on (ITK 5.4 ``itkRayCastInterpolateImageFunction.hxx``):

* The ray caster ignores the image *direction* (it uses origin and spacing only), so the PIR volume is
  reoriented to an LPS-ordered array with identity direction before it is handed to ITK; a sanity check
  compares voxel values at the same physical (LPS) points in nibabel and ITK.
* It integrates the whole line through the volume box (not only up to the pixel), one bilinear sample per
  voxel plane along the dominant axis, times the step length in mm; it thresholds the *interpolated* HU
  (xray3d interpolates ``max(HU, 0)``), and it drops the outermost half voxel near the box faces. These
  make xray3d's images ~1-3 % brighter, mostly at the image border, without any shift.

Timing: per ROI and repeat the renderers run back to back (interleaved, order rotated every repeat), with
``torch.set_num_threads`` and ITK's global default number of threads set to the same value; ``ms per DRR``
is the median over ROIs x repeats of (time to render both views) / 2, ITK including its (sub-ms) pipeline
set-up. Run on a quiet machine: CPU contention distorts multi-threaded torch much more than ITK.

Usage::

    python experiments/benchmarks/drr_vs_itk.py [--manifest data/embedded/manifest.csv] [--threads 1 2]
        [--repeats 5] [--anatomy vertebra] [--json out.json]

Requires the optional ``itk`` package (``pip install 'xray3d[bench]'``). Prepare the ROIs with
``python -m xray3d.data.embedded --out data/embedded``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xray3d.data.io import load_nifti
from xray3d.data.projection import BiplanarProjector, pir_affine

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO / "data" / "embedded" / "manifest.csv"
VIEWS = ("ap", "lat")
NCC_TARGET = 0.99
RATIO_TARGET = 2.0
RATIO_TARGET_GRID = 64
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def import_itk():
    """Import ``itk`` or exit with the install hint."""
    try:
        import itk
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            f"this benchmark needs ITK ({exc}); install it with: pip install 'xray3d[bench]'"
        ) from exc
    return itk


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson r) of two images."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Roi:
    """One CT ROI: PIR array in HU and its NIfTI (RAS) affine."""

    sample_id: str
    anatomy: str
    data: np.ndarray
    affine: np.ndarray
    spacing_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def centre_ras(self) -> np.ndarray:
        """World (RAS) position of the grid centre, the isocentre of both views."""
        mid = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        return self.affine[:3, :3] @ mid + self.affine[:3, 3]

    @property
    def grid(self) -> str:
        return f"{self.shape[0]}^3@{self.spacing_mm:g}mm"


def load_rois(manifest: str | Path, anatomy: str | None = None, limit: int | None = None) -> list[Roi]:
    """Read the CT ROIs listed in ``manifest`` (paths relative to its folder).

    Raises:
        FileNotFoundError: no manifest.
        ValueError: a ROI is not an isotropic PIR grid (what BiplanarProjector assumes).
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(
            f"manifest {manifest} not found; prepare the ROIs with: "
            "python -m xray3d.data.embedded --out data/embedded"
        )
    df = pd.read_csv(manifest)
    if anatomy:
        df = df[df["anatomy"] == anatomy]
    if limit:
        df = df.head(limit)
    rois = []
    for row in df.itertuples(index=False):
        img = load_nifti(manifest.parent / row.ct_path, "CT")
        data = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
        spacing = float(np.linalg.norm(affine[:3, 0]))
        expected = pir_affine(data.shape, spacing).numpy()
        if not np.allclose(affine[:3, :3], expected[:3, :3], atol=1e-4):
            raise ValueError(
                f"{row.ct_path}: affine {affine[:3, :3].tolist()} is not an isotropic PIR grid of "
                f"{spacing} mm, which BiplanarProjector assumes"
            )
        rois.append(Roi(str(row.sample_id), str(row.anatomy), data, affine, spacing))
    if not rois:
        raise ValueError(f"no ROI in {manifest} (anatomy={anatomy!r})")
    return rois


# ----------------------------------------------------------------------------------------------- ITK
def itk_image(roi: Roi):
    """The ROI as an ``itk.Image[itk.F, 3]`` in LPS physical space with identity direction.

    ``RayCastInterpolateImageFunction`` ignores the image direction, so the voxel array is first reoriented
    (nibabel) so that its axes run along +L, +P, +S; origin and spacing come from the NIfTI affine with x and
    y negated (RAS -> LPS). ITK arrays are (k, j, i) ordered, hence the transpose.
    """
    import nibabel.orientations as nio

    itk = import_itk()
    ornt = nio.ornt_transform(nio.io_orientation(roi.affine), nio.axcodes2ornt(("L", "P", "S")))
    arr = nio.apply_orientation(roi.data, ornt)
    aff_ras = roi.affine @ nio.inv_ornt_aff(ornt, roi.data.shape)
    aff_lps = np.diag([*_RAS_TO_LPS, 1.0]) @ aff_ras
    spacing = np.linalg.norm(aff_lps[:3, :3], axis=0)
    direction = aff_lps[:3, :3] / spacing
    if not np.allclose(direction, np.eye(3), atol=1e-5):
        raise ValueError(
            f"{roi.sample_id}: oblique grid (direction {direction.tolist()}) "
            "is not supported by ITK's ray caster"
        )
    image = itk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0), dtype=np.float32))
    image.SetOrigin(aff_lps[:3, 3].tolist())
    image.SetSpacing(spacing.tolist())
    image.SetDirection(itk.matrix_from_array(np.eye(3)))
    return image


def check_itk_image(roi: Roi, image, n_points: int = 64, seed: int = 0) -> float:
    """Compare nibabel and ITK voxel values at the same physical points (corners + random voxels).

    Returns:
        The largest absolute difference in HU (0 when the ITK image is built correctly).

    Raises:
        AssertionError: a point maps outside the ITK image or to a different value.
    """
    rng = np.random.default_rng(seed)
    shape = np.asarray(roi.shape)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (shape - 1)
    idx = np.concatenate([corners, rng.integers(0, shape, size=(n_points, 3))])
    worst = 0.0
    for ijk in idx:
        ras = roi.affine[:3, :3] @ ijk + roi.affine[:3, 3]
        index = image.TransformPhysicalPointToIndex((ras * _RAS_TO_LPS).tolist())
        if not all(0 <= int(index[d]) < int(shape[d]) for d in range(3)):
            raise AssertionError(
                f"{roi.sample_id}: voxel {ijk.tolist()} maps outside the ITK image ({index})"
            )
        worst = max(worst, abs(float(image.GetPixel(index)) - float(roi.data[tuple(ijk)])))
    if worst > 1e-3:
        raise AssertionError(
            f"{roi.sample_id}: ITK and nibabel disagree by {worst} HU at the same physical point"
        )
    return worst


def world_rays(proj: BiplanarProjector, roi: Roi) -> tuple[np.ndarray, np.ndarray]:
    """LPS source ``(2, 3)`` and detector pixel centres ``(2, N, N, 3)`` of the ROI's AP and LAT views."""
    source, targets = proj.ray_geometry(roi.shape, roi.spacing_mm)
    centre = roi.centre_ras
    source = (source.double().numpy() + centre) * _RAS_TO_LPS
    targets = (targets.double().numpy() + centre) * _RAS_TO_LPS
    return source, targets


class ItkDrr:
    """ITK ray-cast DRRs of one ROI on the xray3d detector grids (images in the xray3d layouts)."""

    def __init__(
        self, image, source_lps: np.ndarray, targets_lps: np.ndarray, threshold: float = 0.0
    ) -> None:
        self.itk = import_itk()
        self.image = image
        self.source = source_lps
        self.targets = targets_lps
        self.threshold = float(threshold)
        self.image_type = self.itk.Image[self.itk.F, 3]

    def _filter(self, view: int):
        itk = self.itk
        grid = self.targets[view]
        n_rows, n_cols = grid.shape[:2]
        d_col, d_row = grid[0, 1] - grid[0, 0], grid[1, 0] - grid[0, 0]
        s_col, s_row = float(np.linalg.norm(d_col)), float(np.linalg.norm(d_row))
        u_col, u_row = d_col / s_col, d_row / s_row
        direction = np.stack([u_col, u_row, np.cross(u_col, u_row)], axis=1)  # columns = index axes i, j, k
        transform = itk.IdentityTransform[itk.D, 3].New()
        caster = itk.RayCastInterpolateImageFunction[self.image_type, itk.D].New()
        caster.SetTransform(transform)
        caster.SetThreshold(self.threshold)
        caster.SetFocalPoint(self.source[view].tolist())
        resample = itk.ResampleImageFilter[self.image_type, self.image_type].New()
        resample.SetInput(self.image)
        resample.SetTransform(transform)
        resample.SetInterpolator(caster)
        resample.SetDefaultPixelValue(0.0)
        resample.SetSize([n_cols, n_rows, 1])
        resample.SetOutputOrigin(grid[0, 0].tolist())
        resample.SetOutputSpacing([s_col, s_row, 1.0])
        resample.SetOutputDirection(itk.matrix_from_array(direction))
        return resample

    def render(self, view: int) -> np.ndarray:
        """``(N, N)`` float32 image: pixel ``[r, c]`` integrates the ray source -> ``targets[view, r, c]``."""
        resample = self._filter(view)
        resample.Update()
        return self.itk.GetArrayFromImage(resample.GetOutput())[0].copy()

    def check_detector(self, view: int) -> float:
        """Largest distance (mm) between the ITK output pixel centres and xray3d's detector pixel centres."""
        resample = self._filter(view)
        resample.UpdateOutputInformation()
        out = resample.GetOutput()
        grid = self.targets[view]
        n_rows, n_cols = grid.shape[:2]
        worst = 0.0
        for r, c in (
            (0, 0),
            (0, n_cols - 1),
            (n_rows - 1, 0),
            (n_rows - 1, n_cols - 1),
            (n_rows // 2, n_cols // 3),
        ):
            point = np.asarray(out.TransformIndexToPhysicalPoint([c, r, 0]), dtype=np.float64)
            worst = max(worst, float(np.linalg.norm(point - grid[r, c])))
        if worst > 1e-3:
            raise AssertionError(f"ITK detector pixel centres are off the xray3d ones by {worst} mm")
        return worst


# ---------------------------------------------------------------------------------------- comparison
def make_projector(roi: Roi, renderer: str = "trilinear") -> BiplanarProjector:
    """Reference-geometry projector whose output is the raw N x N detector image (no resize, no scaling)."""
    proj = BiplanarProjector(renderer=renderer, normalize=False)
    proj.output_px = proj.detector_size(roi.shape, roi.spacing_mm)
    return proj


def render_xray3d(proj: BiplanarProjector, ct: torch.Tensor, spacing_mm: float) -> dict[str, np.ndarray]:
    """Both views of one ROI (``ct``: (1, 1, D, H, W) HU) as ``(N, N)`` float32 arrays."""
    out = proj(ct, spacing_mm)
    return {v: out[v][0, 0].numpy() for v in VIEWS}


@dataclass
class RoiSetup:
    """Everything needed to render one ROI with every renderer."""

    roi: Roi
    ct: torch.Tensor
    itk_drr: ItkDrr
    renderers: dict[str, Callable[[], dict[str, np.ndarray]]]


def setup_roi(roi: Roi, projectors: dict[str, BiplanarProjector]) -> RoiSetup:
    """Build (and sanity-check) the ITK image and detector for ``roi``; renderers keyed by name."""
    image = itk_image(roi)
    check_itk_image(roi, image)
    source, targets = world_rays(projectors["xray3d"], roi)
    dist = np.linalg.norm(source - roi.centre_ras * _RAS_TO_LPS, axis=1)
    if not np.allclose(dist, projectors["xray3d"].source_to_isocenter_mm, atol=1e-2):
        raise AssertionError(f"source-isocentre distances {dist.tolist()} differ from the projector's")
    itk_drr = ItkDrr(image, source, targets)
    for v in range(len(VIEWS)):
        itk_drr.check_detector(v)
    ct = torch.from_numpy(roi.data)[None, None]
    renderers: dict[str, Callable[[], dict[str, np.ndarray]]] = {
        name: (lambda p=p: render_xray3d(p, ct, roi.spacing_mm)) for name, p in projectors.items()
    }
    renderers["itk"] = lambda: {v: itk_drr.render(i) for i, v in enumerate(VIEWS)}
    return RoiSetup(roi, ct, itk_drr, renderers)


def compare_roi(roi: Roi, with_siddon: bool = False) -> dict[str, dict[str, float]]:
    """Render ``roi`` with xray3d (and siddon) and ITK; NCC and intensity scale per view vs ITK."""
    projectors = {"xray3d": make_projector(roi)}
    if with_siddon:
        projectors["siddon"] = make_projector(roi, "siddon")
    setup = setup_roi(roi, projectors)
    images = {name: fn() for name, fn in setup.renderers.items()}
    return image_stats(images)


def image_stats(images: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per view: NCC and sum ratio of every renderer against ITK."""
    ref = images["itk"]
    stats: dict[str, dict[str, float]] = {}
    for name, views in images.items():
        if name == "itk":
            continue
        for v in VIEWS:
            if views[v].shape != ref[v].shape:
                raise AssertionError(f"{name} {v} image {views[v].shape} vs ITK {ref[v].shape}")
            stats.setdefault(name, {})[f"ncc_{v}"] = ncc(views[v], ref[v])
            stats[name][f"scale_{v}"] = float(views[v].sum() / max(float(ref[v].sum()), 1e-12))
    return stats


def set_threads(n: int) -> None:
    """Same intra-op thread count for torch and ITK."""
    itk = import_itk()
    torch.set_num_threads(n)
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(n)


# ----------------------------------------------------------------------------------------- benchmark
def run_benchmark(
    rois: list[Roi], threads: list[int], repeats: int, siddon_repeats: int, log: Callable[[str], None] = print
) -> dict:
    """Interleaved timing of xray3d / ITK (/ siddon) per grid and thread count, plus NCC per ROI and view."""
    groups: dict[tuple, list[Roi]] = {}
    for roi in rois:
        groups.setdefault((roi.anatomy, roi.shape, roi.spacing_mm), []).append(roi)
    results: dict = {"groups": []}
    for (anatomy, shape, spacing), members in groups.items():
        projectors = {"xray3d": make_projector(members[0])}
        if siddon_repeats > 0:
            projectors["siddon"] = make_projector(members[0], "siddon")
        det_px = projectors["xray3d"].output_px
        log(
            f"[{anatomy} {members[0].grid}] {len(members)} ROIs, {det_px}x{det_px} px: "
            "set-up and sanity checks"
        )
        setups = [setup_roi(roi, projectors) for roi in members]
        group: dict = {
            "anatomy": anatomy,
            "grid": members[0].grid,
            "shape": list(shape),
            "spacing_mm": spacing,
            "detector_px": det_px,
            "n_rois": len(members),
            "rois": [],
            "timing": {},
        }
        set_threads(threads[0])
        for s in setups:
            images = {name: fn() for name, fn in s.renderers.items()}  # also the warm-up
            group["rois"].append({"sample_id": s.roi.sample_id, **image_stats(images)})
        for n_threads in threads:
            set_threads(n_threads)
            for s in setups:  # warm-up at this thread count
                for fn in s.renderers.values():
                    fn()
            times: dict[str, list[float]] = {name: [] for name in setups[0].renderers}
            paired: list[float] = []
            for rep in range(repeats):
                for s in setups:
                    names = [n for n in s.renderers if n != "siddon" or rep < siddon_repeats]
                    names = names[rep % len(names) :] + names[: rep % len(names)]
                    this: dict[str, float] = {}
                    for name in names:
                        t0 = time.perf_counter()
                        s.renderers[name]()
                        this[name] = (time.perf_counter() - t0) * 1e3 / len(VIEWS)
                        times[name].append(this[name])
                    paired.append(this["xray3d"] / this["itk"])
            timing = {f"{name}_ms": statistics.median(ts) for name, ts in times.items() if ts}
            timing["ratio"] = timing["xray3d_ms"] / timing["itk_ms"]
            timing["ratio_paired_median"] = statistics.median(paired)
            timing["n_samples"] = {name: len(ts) for name, ts in times.items()}
            group["timing"][str(n_threads)] = timing
            log(
                f"  threads={n_threads}: xray3d {timing['xray3d_ms']:.1f} ms, ITK {timing['itk_ms']:.1f} ms, "
                f"ratio {timing['ratio']:.2f}"
            )
        results["groups"].append(group)
    return results


def summarise(results: dict, threads: list[int]) -> list[dict]:
    """Attach NCC summaries to each group and return the PASS/FAIL target rows."""
    targets = []
    for g in results["groups"]:
        summary = {}
        for name in [k for k in g["rois"][0] if k != "sample_id"]:
            for key in g["rois"][0][name]:
                vals = [r[name][key] for r in g["rois"]]
                summary[f"{name}_{key}"] = {"mean": float(np.mean(vals)), "min": float(np.min(vals))}
        g["summary"] = summary
        for v in VIEWS:
            worst = summary[f"xray3d_ncc_{v}"]["min"]
            targets.append(
                {
                    "target": f"NCC(xray3d, ITK) >= {NCC_TARGET} "
                    f"[{g['anatomy']} {g['grid']} {v}, min over ROIs]",
                    "value": worst,
                    "pass": bool(worst >= NCC_TARGET),
                }
            )
        if g["shape"][0] == RATIO_TARGET_GRID:
            for t in threads:
                ratio = g["timing"][str(t)]["ratio"]
                targets.append(
                    {
                        "target": f"ms ratio xray3d/ITK <= {RATIO_TARGET} "
                        f"[{g['anatomy']} {g['grid']}, {t} thread(s)]",
                        "value": ratio,
                        "pass": bool(ratio <= RATIO_TARGET),
                    }
                )
    return targets


def print_report(results: dict, targets: list[dict], threads: list[int]) -> None:
    env = results["env"]
    print()
    print(
        f"DRR benchmark: xray3d BiplanarProjector(trilinear) vs ITK RayCastInterpolateImageFunction "
        f"(torch {env['torch']}, itk {env['itk']}, {env['cpu']}, {env['cpu_count']} CPUs, "
        f"load avg {env['loadavg_start']} -> {env['loadavg_end']})"
    )
    print(
        "geometry: source 1000 mm from the ROI centre, detector through the centre, 1 mm pixels, "
        "raw N x N images"
    )
    print()
    head = f"{'threads':>7}  {'anatomy':<9} {'grid':<14} {'ROIs':>4} {'det px':>6}  "
    head += f"{'xray3d ms':>9} {'ITK ms':>7} {'ratio':>6} {'paired':>6} {'siddon ms':>9} {'siddon/ITK':>10}"
    print("ms per DRR (median over ROIs x repeats; ratio = xray3d/ITK; paired = median of per-run ratios)")
    print(head)
    for t in threads:
        for g in results["groups"]:
            tm = g["timing"][str(t)]
            sid = tm.get("siddon_ms")
            sid_s = f"{sid:9.1f} {sid / tm['itk_ms']:10.1f}" if sid is not None else f"{'-':>9} {'-':>10}"
            print(
                f"{t:>7}  {g['anatomy']:<9} {g['grid']:<14} {g['n_rois']:>4} {g['detector_px']:>6}  "
                f"{tm['xray3d_ms']:9.1f} {tm['itk_ms']:7.1f} {tm['ratio']:6.2f} "
                f"{tm['ratio_paired_median']:6.2f} {sid_s}"
            )
    print()
    print("NCC vs ITK per view (mean / min over ROIs); scale = sum(image) / sum(ITK image), mean")
    print(
        f"{'renderer':<8} {'anatomy':<9} {'grid':<14} {'view':<4} {'NCC mean':>9} {'NCC min':>8} {'scale':>6}"
    )
    for g in results["groups"]:
        for name in ("xray3d", "siddon"):
            if f"{name}_ncc_ap" not in g["summary"]:
                continue
            for v in VIEWS:
                s = g["summary"]
                print(
                    f"{name:<8} {g['anatomy']:<9} {g['grid']:<14} {v:<4} {s[f'{name}_ncc_{v}']['mean']:9.4f} "
                    f"{s[f'{name}_ncc_{v}']['min']:8.4f} {s[f'{name}_scale_{v}']['mean']:6.3f}"
                )
    print()
    print("targets")
    for t in targets:
        print(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']:.4f}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--manifest", default=str(DEFAULT_MANIFEST), help="ROI manifest [data/embedded/manifest.csv]"
    )
    parser.add_argument("--anatomy", default=None, help="only this anatomy (e.g. vertebra) [all]")
    parser.add_argument("--limit", type=int, default=None, help="at most this many ROIs [all]")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="thread counts for torch and ITK, each timed in turn [1 2]",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per ROI [5]")
    parser.add_argument(
        "--siddon-repeats", type=int, default=2, help="repeats that also time siddon; 0 = skip [2]"
    )
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target fails")
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(t < 1 for t in args.threads):
        parser.error("--repeats and --threads must be >= 1")

    itk = import_itk()
    rois = load_rois(args.manifest, args.anatomy, args.limit)
    env = {
        "torch": torch.__version__,
        "itk": itk.Version.GetITKVersion(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = run_benchmark(rois, args.threads, args.repeats, min(args.siddon_repeats, args.repeats), log)
    env["loadavg_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    results["env"] = env
    results["args"] = vars(args)
    targets = summarise(results, args.threads)
    results["targets"] = targets
    print_report(results, targets, args.threads)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults: {args.json}")
    return 1 if args.strict and not all(t["pass"] for t in targets) else 0


if __name__ == "__main__":
    raise SystemExit(main())
