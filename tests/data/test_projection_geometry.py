"""BiplanarProjector.ray_geometry: world (RAS) rays of the AP / LAT views, in the documented image layouts."""

from __future__ import annotations

import pytest
import torch

from xray3d.data.projection import BiplanarProjector, pir_affine

SHAPE = (32, 32, 32)
SPACING = 1.5  # 48 mm ROI -> 48 px detector at 1 mm


@pytest.fixture(scope="module")
def geometry():
    proj = BiplanarProjector(normalize=False)
    return proj, *proj.ray_geometry(SHAPE, SPACING)


def test_reference_geometry(geometry):
    """Source 1000 mm from the ROI centre, detector through the centre, 1 mm pixels, N = ROI mm."""
    proj, source, targets = geometry
    n = proj.detector_size(SHAPE, SPACING)
    assert n == 48
    assert source.shape == (2, 3) and targets.shape == (2, n, n, 3)
    torch.testing.assert_close(source.norm(dim=-1), torch.full((2,), 1000.0))
    for v in range(2):
        grid = targets[v].double()
        torch.testing.assert_close(
            grid.mean(dim=(0, 1)), torch.zeros(3, dtype=torch.float64), atol=1e-3, rtol=0
        )
        # The detector plane is perpendicular to the central ray and passes through the centre.
        normal = source[v].double() / source[v].double().norm()
        assert (grid.reshape(-1, 3) @ normal).abs().max() < 1e-3
        torch.testing.assert_close(
            (grid[:, 1:] - grid[:, :-1]).norm(dim=-1), torch.ones(n, n - 1, dtype=grid.dtype)
        )
        torch.testing.assert_close(
            (grid[1:] - grid[:-1]).norm(dim=-1), torch.ones(n - 1, n, dtype=grid.dtype)
        )


def test_layouts(geometry):
    """AP (I, R): source anterior, rows S->I, cols toward R. LAT (P, I): source left, rows A->P, cols S->I."""
    _, source, targets = geometry
    ap, lat = targets[0], targets[1]
    assert source[0, 1] > 999 and source[1, 0] < -999  # RAS: +y anterior, -x left
    step = torch.tensor
    torch.testing.assert_close(
        ap[1, 0] - ap[0, 0], step([0.0, 0.0, -1.0]), atol=1e-4, rtol=0
    )  # rows: inferior
    torch.testing.assert_close(ap[0, 1] - ap[0, 0], step([1.0, 0.0, 0.0]), atol=1e-4, rtol=0)  # cols: right
    torch.testing.assert_close(
        lat[1, 0] - lat[0, 0], step([0.0, -1.0, 0.0]), atol=1e-4, rtol=0
    )  # rows: posterior
    torch.testing.assert_close(
        lat[0, 1] - lat[0, 0], step([0.0, 0.0, -1.0]), atol=1e-4, rtol=0
    )  # cols: inferior


def test_rays_match_rendering():
    """A small bright blob renders where its ray hits the detector grid (to 0.1 px), in both views."""
    proj = BiplanarProjector(normalize=False)
    proj.output_px = proj.detector_size(SHAPE, SPACING)  # raw detector image, no resize
    source, targets = proj.ray_geometry(SHAPE, SPACING)
    ct = torch.full((1, 1, *SHAPE), -1000.0)
    p, i, r = 9, 22, 24  # off-centre along every axis
    ct[0, 0, p : p + 2, i : i + 2, r : r + 2] = 1000.0
    blob = (pir_affine(SHAPE, SPACING) @ torch.tensor([p + 0.5, i + 0.5, r + 0.5, 1.0], dtype=torch.float64))[
        :3
    ]
    views = proj(ct, SPACING)
    for v, name in enumerate(("ap", "lat")):
        img = views[name][0, 0].double()
        rows, cols = torch.meshgrid(torch.arange(img.shape[0]), torch.arange(img.shape[1]), indexing="ij")
        rendered = torch.stack([(img * rows).sum(), (img * cols).sum()]) / img.sum()
        # Where the ray source -> blob meets the detector plane, in (row, col) pixel units of ``targets``.
        grid, src = targets[v].double(), source[v].double()
        origin, u_row, u_col = grid[0, 0], grid[1, 0] - grid[0, 0], grid[0, 1] - grid[0, 0]
        normal = torch.linalg.cross(u_row, u_col)
        hit = src + (blob - src) * ((origin - src) @ normal) / ((blob - src) @ normal)
        expected = torch.stack(
            [(hit - origin) @ u_row / (u_row @ u_row), (hit - origin) @ u_col / (u_col @ u_col)]
        )
        assert (rendered - expected).abs().max() < 0.1, (name, rendered, expected)


def test_rotation_deg():
    """Explicit reference poses reproduce the default; the LAT pose as AP moves the AP source to the left."""
    proj = BiplanarProjector()
    source, targets = proj.ray_geometry(SHAPE, SPACING)
    ref = torch.tensor([proj.ap_rotation_deg, proj.lat_rotation_deg])
    source2, targets2 = proj.ray_geometry(SHAPE, SPACING, rotation_deg=ref)
    torch.testing.assert_close(source2, source)
    torch.testing.assert_close(targets2, targets)
    source3, _ = proj.ray_geometry(SHAPE, SPACING, rotation_deg=torch.tensor([proj.lat_rotation_deg] * 2))
    torch.testing.assert_close(source3[0], source[1])
    with pytest.raises(ValueError, match="rotation_deg"):
        proj.ray_geometry(SHAPE, SPACING, rotation_deg=torch.zeros(3))
