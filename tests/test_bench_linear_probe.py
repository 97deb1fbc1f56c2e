"""``benchmarks/bench_linear_probe.py`` feeds the probe images averaged down to 64 x 64, whatever the profile's size."""

import numpy as np


def test_pixels_average_the_whole_image_at_any_size(import_script):
    probe = import_script("benchmarks/bench_linear_probe.py")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 128, 128)).astype(np.uint8)
    blocks = (images / 255.0).reshape(2, 64, 2, 64, 2).mean(axis=(2, 4)).reshape(2, -1)
    np.testing.assert_allclose(probe.pixels(images), blocks, atol=1e-6)  # 128 px: 2 x 2 block means
    right_half = np.zeros((1, 96, 96), np.uint8)
    right_half[..., 48:] = 255  # at 96 px a crop of the top-left 64 x 64 would see a third of the white half
    small = probe.pixels(right_half).reshape(64, 64)
    assert small[:, :32].max() == 0 and small[:, 32:].min() == 1.0
