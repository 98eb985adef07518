"""Keys cubic convolution, the bicubic kernel of every resampler in osr-sdk (and of PyTorch/OpenCV)."""

from __future__ import annotations

import numpy as np

BICUBIC_A = -0.75


def keys_weights(t: np.ndarray) -> list[np.ndarray]:
    """Weights of the taps at offsets −1, 0, 1, 2 for fractional positions t in [0, 1)."""
    a = BICUBIC_A

    def near(d: np.ndarray) -> np.ndarray:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]
