"""The reference transforms alone: scales, crop geometry, flips, colour shift, mean subtraction, and their statistics."""

import numpy as np
import pytest
import torch

from vgg import augment as A

MEAN = np.array([120.0, 110.0, 100.0])
EIGVAL = np.array([60.0, 10.0, 2.0])
EIGVEC = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]


@pytest.mark.parametrize("h, w, s, expected", [
    (375, 500, 256, (256, 341)), (500, 375, 256, (341, 256)), (300, 300, 384, (384, 384)),
    (100, 1000, 32, (32, 320)), (64, 65, 64, (64, 65)),
])
def test_rescaled_size_is_isotropic_with_shorter_side_s(h, w, s, expected):
    assert A.rescaled_size(h, w, s) == expected


def test_sample_params_statistics():
    rng = np.random.default_rng(0)
    n = 20_000
    draws = [A.sample_params(rng, 375, 500, 256, 512, 224) for _ in range(n)]
    scales = np.array([p.scale for p in draws])
    assert scales.min() == 256 and scales.max() == 512  # inclusive integer range
    counts = np.bincount(scales - 256, minlength=257)
    # Uniform over 257 values: a chi-square test at a loose threshold (mean 257 dof, sd ~22.6).
    chi2 = ((counts - n / 257) ** 2 / (n / 257)).sum()
    assert chi2 < 257 + 5 * 22.7
    flips = np.mean([p.flip for p in draws])
    assert abs(flips - 0.5) < 4 * 0.5 / np.sqrt(n)
    alphas = np.array([p.alphas for p in draws])
    assert np.allclose(alphas.std(0), 0.1, rtol=0.03) and np.allclose(alphas.mean(0), 0, atol=0.005)
    # Crop positions are uniform over every valid offset for the drawn scale: relative offsets fill [0, 1].
    rel = []
    for p in draws:
        h, w = A.rescaled_size(375, 500, p.scale)
        assert 0 <= p.top <= h - 224 and 0 <= p.left <= w - 224
        if w > 224:
            rel.append(p.left / (w - 224))
    rel = np.array(rel)
    assert abs(rel.mean() - 0.5) < 0.01 and rel.min() < 0.01 and rel.max() > 0.99
    hist = np.histogram(rel, bins=10, range=(0, 1))[0] / len(rel)
    assert np.all(np.abs(hist - 0.1) < 0.01)


def test_fixed_scale_and_no_flip_and_no_colour():
    rng = np.random.default_rng(1)
    for _ in range(100):
        p = A.sample_params(rng, 200, 300, 256, 256, 224, flip=False, pca_std=0.0)
        assert p.scale == 256 and not p.flip and p.alphas == (0.0, 0.0, 0.0)


def test_bad_scales_are_one_line():
    with pytest.raises(ValueError, match="crop <= Smin <= Smax"):
        A.sample_params(np.random.default_rng(0), 100, 100, 200, 300, 224)
    with pytest.raises(ValueError, match="crop <= Smin <= Smax"):
        A.check_scales(400, 300, 224)


def test_seed_for_is_stable_and_distinct():
    assert A.seed_for(0, 1, "a") == A.seed_for(0, 1, "a")
    assert len({A.seed_for(0, e, k) for e in range(5) for k in "abcde"}) == 25


def test_crop_box_maps_the_crop_back_to_original_pixels():
    p = A.AugmentParams(scale=256, top=10, left=100, flip=False, alphas=(0, 0, 0))
    box = A.crop_box(375, 500, p, 224)
    h, w = A.rescaled_size(375, 500, 256)
    assert box.height == pytest.approx(224 * 375 / h) and box.width == pytest.approx(224 * 500 / w)
    assert box.top == pytest.approx(10 * 375 / h) and box.left == pytest.approx(100 * 500 / w)
    assert box.left + box.width <= 500 + 1e-9 and box.top + box.height <= 375 + 1e-9


def test_colour_shift_is_eigvec_times_scaled_alphas():
    shift = A.colour_shift(EIGVAL, EIGVEC, (0.1, -0.2, 0.3))
    # AlexNet's formula on [0, 1] pixels (variances / 255^2), brought back to the 0-255 scale (* 255).
    expected = 255 * sum(a * (l / 255**2) * EIGVEC[:, i] for i, (a, l) in enumerate(zip((0.1, -0.2, 0.3), EIGVAL)))
    np.testing.assert_allclose(shift, expected)


def test_colour_shift_on_imagenet_statistics_is_a_few_grey_levels():
    # ImageNet's top RGB covariance eigenvalue is about 0.2175 on [0, 1] pixels, i.e. 0.2175 * 255^2 on 0-255.
    shift = A.colour_shift(np.array([0.2175 * 255**2, 0, 0]), np.eye(3), (A.PCA_STD, 0, 0))
    np.testing.assert_allclose(shift, [0.1 * 55.4625, 0, 0])


def test_train_reference_on_a_constant_image_is_mean_subtracted_shifted_constant():
    image = np.full((300, 400, 3), (200, 100, 50), dtype=np.uint8)
    p = A.AugmentParams(scale=256, top=5, left=7, flip=True, alphas=(0.05, 0.0, -0.1))
    out = A.train_reference(image, p, 224, MEAN, EIGVAL, EIGVEC)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float64
    expected = np.array([200, 100, 50]) + A.colour_shift(EIGVAL, EIGVEC, p.alphas) - MEAN
    torch.testing.assert_close(out, torch.as_tensor(expected).view(3, 1, 1).expand(3, 224, 224), rtol=0, atol=1e-9)


def test_train_reference_crop_position_and_flip():
    # A horizontal ramp: after rescale the crop's left column sits at the drawn offset; a flip mirrors it.
    image = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    zero = np.zeros(3)
    p = A.AugmentParams(scale=256, top=0, left=20, flip=False, alphas=(0, 0, 0))
    out = A.train_reference(image, p, 224, zero, EIGVAL, EIGVEC)
    assert out[0, 0, 0] == 20 and out[0, 0, -1] == 243
    flipped = A.train_reference(image, A.AugmentParams(256, 0, 20, True, (0, 0, 0)), 224, zero, EIGVAL, EIGVEC)
    torch.testing.assert_close(flipped, out.flip(-1))


def test_eval_reference_keeps_the_whole_image():
    image = np.random.default_rng(0).integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    out = A.eval_reference(image, 96, MEAN, std=np.array([2.0, 2.0, 2.0]))
    assert out.shape == (3, 96, 160)
    # Mean of the resized image tracks the mean of the original (antialiased bilinear preserves it closely).
    orig = (image.reshape(-1, 3).mean(0) - MEAN) / 2
    np.testing.assert_allclose(out.mean((1, 2)).numpy(), orig, atol=1.0)


def _former_prepare_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """pipeline.prepare's own copy of the rescaled size, (w, h), before it used ``rescaled_size`` (the record)."""
    scale = shorter / min(width, height)
    if width <= height:
        return shorter, max(1, round(height * scale))
    return max(1, round(width * scale)), shorter


@pytest.mark.parametrize("s", [256, 512])
def test_rescaled_size_gives_prepares_former_sizes_at_256_and_512(s):
    # Prepare resizes only images whose shorter side is over S: squares, one pixel over, extreme aspect ratios both
    # ways, camera sizes, and every (shorter, longer) pair in a block past S, in both orientations.
    sizes = [(s + 1, s + 1), (s + 1, s + 2), (s + 1, 100 * s), (s + 7, 64_000), (3000, 4000), (3456, 5184)]
    sizes += [(m, n) for m in range(s + 1, s + 150) for n in range(m, m + 400, 3)]
    for short, long in sizes:
        for h, w in ((short, long), (long, short)):
            assert A.rescaled_size(h, w, s) == _former_prepare_size(w, h, s)[::-1], (h, w)


def test_rescaled_size_clamp_never_binds_and_exact_halves_round_to_even():
    for h, w, s in [(1, 10_000, 1), (10_000, 1, 1), (2, 3, 1), (3, 2, 1), (99_999, 100_000, 3)]:
        out = A.rescaled_size(h, w, s)
        assert min(out) == s and max(out) == round(max(h, w) * s / min(h, w))  # no clamp at 1 nor at s needed
        assert _former_prepare_size(w, h, s)[::-1] == out
    # An exact half: 715 * 480 / 704 = 487.5 rounds to even. Prepare's former product of a rounded scale gave 487;
    # such ties (none at S = 256 or 512, above) are the only sizes prepare now stores differently.
    assert A.rescaled_size(715, 704, 480) == (488, 480)
    assert _former_prepare_size(704, 715, 480) == (480, 487)
