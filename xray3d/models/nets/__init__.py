"""xray3d.models.nets."""
