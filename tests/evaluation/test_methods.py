"""The sweep's methods on constructed cases: stored views, decoded images, 50 crops per scale, combination arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.methods import (CROPS_PER_SCALE, DENSE, DENSE_NOFLIP, MULTICROP, MULTICROP_NOFLIP, average,
                                evaluate_batch, topk_errors)
from evaluation.shard import evaluate_images, shape_batches
from pipeline.decode import make_eval_decoder
from vgg.evaluate import multicrop_posteriors
from vgg.protocol import grid_crops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from jpeg_samples import encode, natural  # noqa: E402

from evalkit import CROP, tiny_net  # noqa: E402

MEAN = np.array([120.0, 110.0, 100.0])


def net64(classes: int = 5, seed: int = 0) -> torch.nn.Module:
    return tiny_net(classes, seed).double()


def test_dense_at_q_equal_to_crop_through_the_decoder():
    """A square JPEG rescaled to Q = crop: dense evaluation sees exactly the crop the FC net sees."""
    model = tiny_net(5)
    jpeg = encode(natural(np.random.default_rng(1), 57, 57))
    (image,) = make_eval_decoder("cpu", mean=MEAN, device="cpu")([jpeg], CROP)
    assert image.shape == (3, CROP, CROP)
    out = evaluate_images(model, make_eval_decoder("cpu", mean=MEAN, device="cpu"), [jpeg], [57], [57], ["k"], CROP,
                          [DENSE])
    expected = model.double()(image[None].double()).softmax(dim=1).detach().numpy()
    np.testing.assert_allclose(out[DENSE_NOFLIP], expected, rtol=1e-5, atol=1e-6)


class CropCounter(torch.nn.Module):
    """Wraps a net: counts the crop-size images through the FC head and the images through the dense form."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.crops, self.dense = net, 0, 0
        self.num_classes, self.crop = net.num_classes, net.crop

    def forward(self, x):
        assert x.shape[-2:] == (CROP, CROP)
        self.crops += x.shape[0]
        return self.net(x)

    def forward_dense(self, x):
        self.dense += x.shape[0]
        return self.net.forward_dense(x)


def test_fifty_crops_per_scale_and_150_over_three_scales():
    rng = np.random.default_rng(2)
    sizes = [(40, 60), (75, 50), (33, 33)]
    jpegs = [encode(natural(rng, h, w)) for h, w in sizes]
    counter = CropCounter(tiny_net(4))
    decoder = make_eval_decoder("cpu", mean=MEAN, device="cpu")
    for q in (32, 40, 48):
        evaluate_images(counter, decoder, jpegs, [h for h, _ in sizes], [w for _, w in sizes], ["a", "b", "c"], q,
                        [MULTICROP], max_crops=64)
    assert CROPS_PER_SCALE == 50
    assert counter.crops == 150 * len(jpegs)
    assert counter.dense == 0
    evaluate_images(counter, decoder, jpegs, [h for h, _ in sizes], [w for _, w in sizes], ["a", "b", "c"], 40,
                    [DENSE])
    assert counter.dense == 2 * len(jpegs)  # each image and its mirror, once



def test_without_flips_no_mirror_image_is_evaluated():
    """A net trained without flips: 25 crops per scale and one dense pass per image, stored as views of their own."""
    rng = np.random.default_rng(2)
    sizes = [(40, 60), (75, 50)]
    jpegs = [encode(natural(rng, h, w)) for h, w in sizes]
    counter = CropCounter(tiny_net(4))
    decoder = make_eval_decoder("cpu", mean=MEAN, device="cpu")
    out = evaluate_images(counter, decoder, jpegs, [h for h, _ in sizes], [w for _, w in sizes], ["a", "b"], 40,
                          [DENSE, MULTICROP], max_crops=64, flip=False)
    assert set(out) == {DENSE_NOFLIP, MULTICROP_NOFLIP}
    assert counter.crops == CROPS_PER_SCALE // 2 * len(jpegs) and counter.dense == len(jpegs)
    flipped = evaluate_images(tiny_net(4), decoder, jpegs, [h for h, _ in sizes], [w for _, w in sizes], ["a", "b"],
                              40, [DENSE])
    np.testing.assert_allclose(out[DENSE_NOFLIP], flipped[DENSE_NOFLIP], rtol=1e-5, atol=1e-6)  # the same half

def test_flip_averaging():
    model = net64(6)
    x = torch.randn(2, 3, 40, 70, dtype=torch.float64) * 40
    out = evaluate_batch(model, x, CROP, [DENSE, MULTICROP])
    one = lambda img: model.forward_dense(img).mean(dim=(2, 3)).softmax(dim=1)  # noqa: E731
    torch.testing.assert_close(out[DENSE], 0.5 * (one(x) + one(x.flip(3))))
    torch.testing.assert_close(out[DENSE_NOFLIP], one(x))
    # A mirrored image has the mirrored posteriors swapped: dense is flip-invariant.
    torch.testing.assert_close(evaluate_batch(model, x.flip(3), CROP, [DENSE])[DENSE], out[DENSE])
    # Multi-crop: the mean of the soft-max of 25 crops and their 25 mirror images.
    views = [x[:, :, t : t + CROP, l : l + CROP] for t, l in grid_crops(40, 70, CROP)]
    views += [v.flip(3) for v in views]
    expected = torch.stack([model(v).softmax(dim=1) for v in views]).mean(dim=0)
    torch.testing.assert_close(out[MULTICROP], expected)
    # The crops of a batch in pieces give the same as in one pass.
    torch.testing.assert_close(multicrop_posteriors(model, x, CROP, max_crops=1), out[MULTICROP])


@pytest.mark.parametrize("sizes", [[(32, 300), (300, 32), (33, 47), (47, 33), (40, 40), (32, 300)],
                                   [(35, 1000), (61, 37)]])
def test_odd_sizes_and_extreme_aspect_ratios_are_never_padded(sizes):
    """Each image evaluated in a batch of mixed shapes gets exactly what it gets alone."""
    rng = np.random.default_rng(3)
    jpegs = [encode(natural(rng, h, w)) for h, w in sizes]
    keys = [f"k{i}" for i in range(len(sizes))]
    hs, ws = [h for h, _ in sizes], [w for _, w in sizes]
    model, decoder = tiny_net(3), make_eval_decoder("cpu", mean=MEAN, device="cpu")
    together = evaluate_images(model, decoder, jpegs, hs, ws, keys, 36, [DENSE, MULTICROP], batch_size=8)
    for i in range(len(sizes)):
        alone = evaluate_images(model, decoder, [jpegs[i]], [hs[i]], [ws[i]], [keys[i]], 36, [DENSE, MULTICROP])
        for view, probs in together.items():
            np.testing.assert_allclose(probs[i], alone[view][0], rtol=1e-5, atol=1e-6)
            assert np.isclose(probs[i].sum(), 1.0, atol=1e-5)
    for batch in shape_batches(hs, ws, 36, batch_size=8):
        assert len({(hs[i], ws[i]) for i in batch}) == 1


def test_shape_batches_split_large_groups():
    batches = shape_batches([40] * 5 + [50], [60] * 5 + [50], 32, batch_size=2)
    assert sorted(len(b) for b in batches) == [1, 1, 2, 2]
    assert sorted(i for b in batches for i in b) == list(range(6))


def test_topk_errors_and_average():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
    labels = np.array([0, 0, 2])
    e = topk_errors(probs, labels, ks=(1, 2, 5))
    assert e[1] == pytest.approx(2 / 3)  # image 1 (0 ranks third) and image 2 (2 ranks second, tied with 0)
    assert e[2] == pytest.approx(1 / 3)
    assert e[5] == 0.0  # k is capped at the number of classes
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(average([a, b]), [[0.5, 0.5]])
    np.testing.assert_allclose(average([a, a, b]), [[2 / 3, 1 / 3]])
    with pytest.raises(ValueError, match="different shapes"):
        average([a, np.zeros((2, 2))])
