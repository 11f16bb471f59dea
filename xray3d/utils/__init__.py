"""xray3d.utils."""
