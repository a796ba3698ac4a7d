"""The paper's test-time evaluation on constructed cases: dense with and without flip, the 5x5x2 crops, shape groups."""

from __future__ import annotations

import random

import pytest
import torch

from vgg.evaluate import (
    dense_posteriors,
    dense_views,
    flip_average,
    grid_crop_batch,
    group_by_shape,
    multicrop_posteriors,
    stack_by_shape,
)
from vgg.model import ARCHS, build
from vgg.protocol import grid_crops

CROP = 32


def thin(arch: str = "A", classes: int = 5, seed: int = 0) -> torch.nn.Module:
    """A thin net of Table 1 in float64 (so equalities hold to 1e-12), eval mode."""
    torch.manual_seed(seed)
    return build(arch, classes, width=0.125, fc_width=32, crop=CROP, init="glorot").double().eval()


def images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 50


@pytest.mark.parametrize("h,w", [(CROP, CROP), (40, 70), (101, 33)])
def test_shapes_and_posteriors_sum_to_one(h, w):
    model, x = thin(classes=7), images(3, h, w)
    with torch.no_grad():
        plain, mirrored = dense_views(model, x)
        outs = [plain, mirrored, dense_posteriors(model, x), dense_posteriors(model, x, flip=False),
                multicrop_posteriors(model, x, CROP)]
    for p in outs:
        assert p.shape == (3, 7) and p.dtype == torch.float64
        torch.testing.assert_close(p.sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert grid_crop_batch(x, CROP).shape == (3, 25, 3, CROP, CROP)


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_at_the_training_crop_equals_the_fc_logits_softmax(arch):
    model, x = thin(arch), images(4, CROP, CROP)
    with torch.no_grad():
        expected = model(x).softmax(dim=1)
        torch.testing.assert_close(dense_posteriors(model, x, flip=False), expected, rtol=1e-12, atol=1e-14)
        # The one crop of an image the size of the crop is the whole image.
        (top, left), = grid_crops(CROP, CROP, CROP, n=1)
        torch.testing.assert_close(model(x[:, :, top : top + CROP, left : left + CROP]).softmax(dim=1), expected)


def test_flip_average_is_the_mean_of_the_image_and_its_mirror():
    model, x = thin(classes=6), images(2, 40, 70)
    with torch.no_grad():
        alone = dense_posteriors(model, x, flip=False)
        mirror = dense_posteriors(model, x.flip(3), flip=False)
        both = dense_posteriors(model, x)
        torch.testing.assert_close(both, 0.5 * (alone + mirror))
        torch.testing.assert_close(flip_average(*dense_views(model, x)), both)
        torch.testing.assert_close(dense_views(model, x)[0], alone)
        torch.testing.assert_close(dense_posteriors(model, x.flip(3)), both)  # flip-averaged dense is flip-invariant


def test_multicrop_is_the_mean_over_25_crops_and_their_mirrors_in_any_pieces():
    model, x = thin(classes=6), images(2, 40, 70)
    with torch.no_grad():
        views = [x[:, :, t : t + CROP, l : l + CROP] for t, l in grid_crops(40, 70, CROP)]
        views += [v.flip(3) for v in views]
        expected = torch.stack([model(v).softmax(dim=1) for v in views]).mean(dim=0)
        torch.testing.assert_close(multicrop_posteriors(model, x, CROP), expected)
        torch.testing.assert_close(multicrop_posteriors(model, x, CROP, max_crops=1), expected)



def test_multicrop_without_flip_is_the_mean_over_the_25_crops_alone():
    """For a net trained without flips: the grid's 25 crops, no mirror images (their soft-max never enters)."""
    model, x = thin(classes=6), images(2, 40, 70)
    with torch.no_grad():
        views = [x[:, :, t : t + CROP, l : l + CROP] for t, l in grid_crops(40, 70, CROP)]
        expected = torch.stack([model(v).softmax(dim=1) for v in views]).mean(dim=0)
        torch.testing.assert_close(multicrop_posteriors(model, x, CROP, flip=False), expected)
        torch.testing.assert_close(multicrop_posteriors(model, x, CROP, max_crops=1, flip=False), expected)
        assert not torch.allclose(multicrop_posteriors(model, x, CROP), expected)  # the mirrors do change it

def test_half_precision_scores_give_float32_posteriors():
    """Under bf16 (autocast on GPUs) the spatial mean and soft-max run in float32."""
    model, x = thin().float().to(torch.bfloat16), images(2, 40, 40).to(torch.bfloat16)
    with torch.no_grad():
        assert dense_posteriors(model, x).dtype == torch.float32
        assert multicrop_posteriors(model, x, CROP).dtype == torch.float32


def coordinates(h: int, w: int) -> torch.Tensor:
    """An image whose channel 0 holds the row and channel 1 the column of each pixel."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([y, x, torch.zeros_like(y)])[None]


@pytest.mark.parametrize("h,w", [(32, 32), (40, 75), (101, 33), (32, 300)])
def test_grid_reaches_every_corner_and_the_centre(h, w):
    crops = grid_crop_batch(coordinates(h, w), CROP)[0]
    assert crops.shape == (25, 3, CROP, CROP)
    origin = [(int(c[0, 0, 0]), int(c[1, 0, 0])) for c in crops]
    assert origin[0] == (0, 0)
    assert origin[4] == (0, w - CROP)
    assert origin[20] == (h - CROP, 0)
    assert origin[24] == (h - CROP, w - CROP)
    assert abs(origin[12][0] - (h - CROP) / 2) <= 0.5 and abs(origin[12][1] - (w - CROP) / 2) <= 0.5
    # Every crop is a contiguous window of the image (no resampling, no padding).
    for c, (t, l) in zip(crops, origin):
        assert torch.equal(c, coordinates(h, w)[0, :, t : t + CROP, l : l + CROP])


@pytest.mark.parametrize("seed", range(5))
def test_grouping_covers_every_image_exactly_once(seed):
    rng = random.Random(seed)
    shapes = [(3, rng.choice([32, 40]), rng.choice([32, 48, 50])) for _ in range(rng.randint(1, 30))]
    groups = group_by_shape(shapes)
    assert sorted(i for g in groups for i in g) == list(range(len(shapes)))
    assert all(len({shapes[i] for i in g}) == 1 for g in groups)
    assert len({shapes[g[0]] for g in groups}) == len(groups)  # one group per shape
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)  # in order of first appearance
    tensors = [torch.full(s, float(i)) for i, s in enumerate(shapes)]
    seen = []
    for idx, batch in stack_by_shape(tensors):
        assert batch.shape == (len(idx), *shapes[idx[0]])
        assert [int(b[0, 0, 0]) for b in batch] == idx  # each image is its own, unpadded
        seen += idx
    assert sorted(seen) == list(range(len(shapes)))
    assert group_by_shape([]) == []
