"""Square working grids and back: a non-square scan's map must land where it was computed, not stretched."""

from __future__ import annotations

import numpy as np

from anomalens.engine.preprocess import resize_slices
from anomalens.engine.preprocess.resize import from_square, pad_to_square


def test_from_square_undoes_padding_and_resizing() -> None:
    yy, xx = np.mgrid[0:40, 0:64].astype(np.float32)
    scan = np.stack([np.exp(-((yy - 20) ** 2 + (xx - 48) ** 2) / 50.0)] * 2)  # a blob right of centre
    work = resize_slices(pad_to_square(scan), 32)
    back = from_square(work, (40, 64))
    assert back.shape == (2, 40, 64)
    assert np.unravel_index(back[0].argmax(), back[0].shape) == np.unravel_index(scan[0].argmax(), scan[0].shape)
    assert np.abs(back - scan).max() < 0.1
    stretched = resize_slices(work, (40, 64))  # what the demo used to do
    assert np.abs(stretched - scan).max() > 0.3


def test_from_square_is_identity_for_a_square_grid_of_the_right_size() -> None:
    x = np.random.default_rng(0).random((1, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(from_square(x, (16, 16)), x)
