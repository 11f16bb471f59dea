"""QC picture of one prediction: both input views with the prediction's projections, and three slices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["qc_figure"]


def qc_figure(
    ap: np.ndarray,
    lat: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """Write the QC PNG of one case.

    Top row: the AP and LAT model inputs (training layouts, shown with the head up) with the outline of
    the predicted mask projected along the view's beam (red), and the mean probability projections.
    Bottom row: axial, coronal and sagittal slices of the probability through the predicted bone's centre
    (or the grid centre when nothing is predicted), with the threshold contour.

    Args:
        ap: ``(s, s)`` AP input, axes (I, R).
        lat: ``(s, s)`` LAT input, axes (P, I).
        prob: ``(s, s, s)`` PIR probability.
        threshold: bone threshold.
        path: PNG to write.
        title: figure title (case id, score, ...).

    Returns:
        The path written.
    """
    mask = prob > threshold
    centre = np.argwhere(mask).mean(0).round().astype(int) if mask.any() else np.array(prob.shape) // 2
    fig, axes = plt.subplots(2, 4, figsize=(11, 5.8))
    # LAT (P, I) shown with the head up: rows I, columns P
    views = [
        ("AP input + predicted outline", ap, mask.any(0)),
        ("LAT input + predicted outline", lat.T, mask.any(2).T),
    ]
    for axis, (name, img, outline) in zip(axes[0, :2], views, strict=True):
        axis.imshow(img, cmap="gray")
        if outline.any():
            axis.contour(outline.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        axis.set_title(name, fontsize=8)
    axes[0, 2].imshow(prob.mean(0), cmap="magma")
    axes[0, 2].set_title("probability, mean along P", fontsize=8)
    axes[0, 3].imshow(prob.mean(2).T, cmap="magma")
    axes[0, 3].set_title("probability, mean along R", fontsize=8)
    p, i, r = centre
    slices = [
        (f"axial (I = {i})", prob[:, i, :]),
        (f"coronal (P = {p})", prob[p]),
        (f"sagittal (R = {r})", prob[:, :, r].T),
    ]
    for axis, (name, img) in zip(axes[1, :3], slices, strict=True):
        axis.imshow(img, cmap="magma", vmin=0, vmax=1)
        if (img > threshold).any() and (img <= threshold).any():
            axis.contour(img, levels=[threshold], colors="cyan", linewidths=0.8)
        axis.set_title(f"probability, {name}", fontsize=8)
    axes[1, 3].axis("off")
    axes[1, 3].text(
        0.0,
        0.5,
        "rows: AP (I x R), LAT (I x P)\naxial: P x R, coronal: I x R,\nsagittal: I x P\n"
        f"threshold {threshold:g}",
        fontsize=8,
        va="center",
    )
    for axis in axes.flat[:7]:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96), h_pad=1.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
