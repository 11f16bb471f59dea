"""xray3d.models."""
