"""xray3d.callbacks."""
