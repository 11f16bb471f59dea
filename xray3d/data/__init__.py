"""xray3d.data."""
