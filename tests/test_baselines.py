"""The mean-shape baseline."""

from __future__ import annotations

import numpy as np
import pytest

from xray3d.baselines import mean_shape


def test_mean_shape_majority_vote():
    a = np.zeros((4, 4, 4))
    b = np.zeros((4, 4, 4))
    c = np.zeros((4, 4, 4))
    a[0, 0, 0] = b[0, 0, 0] = 1  # 2 of 3 -> kept
    c[1, 1, 1] = 1  # 1 of 3 -> dropped
    m = mean_shape([a, b, c])
    assert m[0, 0, 0] and not m[1, 1, 1] and m.sum() == 1


def test_mean_shape_errors():
    with pytest.raises(ValueError, match="at least one"):
        mean_shape([])
    with pytest.raises(ValueError, match="one grid"):
        mean_shape([np.zeros((2, 2, 2)), np.zeros((3, 3, 3))])
