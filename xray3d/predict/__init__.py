"""Prediction from a user's radiograph pair: reading, cropping, uncertainty, meshes and QC pictures."""
