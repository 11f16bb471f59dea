"""xray3d: biplanar X-ray (AP + LAT) to 3D bone shape reconstruction."""

__version__ = "0.1.0"
