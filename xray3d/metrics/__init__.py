"""xray3d.metrics."""
