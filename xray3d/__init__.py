"""xray3d: biplanar X-ray (AP + LAT) to 3D bone shape reconstruction."""

from pathlib import Path

__version__ = "0.1.0"

#: the Hydra config directory (the repository's ``conf/``; the package is installed editable)
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
