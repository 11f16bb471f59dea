"""xray3d.pipeline."""

from xray3d.utils.quiet import quiet_third_party as _quiet

_quiet()  # the CLIs: no third-party noise that says nothing to the user (xray3d/utils/quiet.py)
