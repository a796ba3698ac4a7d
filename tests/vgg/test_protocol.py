"""The test protocols: Q sets from training scales, and the 5x5 crop grid."""

import pytest

from vgg.protocol import TrainScale, grid_crops, grid_offsets, multi_scale_q, single_scale_q


@pytest.mark.parametrize("smin, smax, q, qs", [
    (256, 256, 256, (224, 256, 288)),
    (384, 384, 384, (352, 384, 416)),
    (256, 512, 384, (256, 384, 512)),
])
def test_q_from_training_scale_matches_tables_3_and_4(smin, smax, q, qs):
    scale = TrainScale(smin, smax)
    assert single_scale_q(scale) == q
    assert multi_scale_q(scale) == qs


@pytest.mark.parametrize("h, w", [(224, 224), (256, 341), (512, 300), (225, 1000)])
def test_grid_reaches_corners_and_centre(h, w):
    crops = grid_crops(h, w, 224)
    assert len(crops) == 25
    corners = {(0, 0), (0, w - 224), (h - 224, 0), (h - 224, w - 224)}
    assert corners <= set(crops)
    assert abs(crops[12][0] - (h - 224) / 2) <= 0.5 and abs(crops[12][1] - (w - 224) / 2) <= 0.5
    assert all(0 <= t <= h - 224 and 0 <= l <= w - 224 for t, l in crops)


def test_grid_rejects_sides_shorter_than_crop():
    with pytest.raises(ValueError, match="shorter than the crop"):
        grid_offsets(200, 224)
