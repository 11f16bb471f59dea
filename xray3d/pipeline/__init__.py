"""xray3d.pipeline."""
