"""pipeline.convert: one source file -> the stored RGB JPEG, quirks converted, bad files skipped with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile
from source_images import declaring, exif_rotated_jpeg, jpeg, png16

from pipeline.convert import SkipFile, convert_image, decode_rgb
from vgg.augment import rescaled_size


def test_ordinary_rgb_jpeg_is_kept_byte_for_byte():
    data = jpeg(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    out = convert_image(data)
    assert out.image is data and (out.height, out.width, out.action) == (50, 70, "unchanged")


def test_quirks_become_correct_rgb_jpegs(tiny_imagenet):
    for kind, rel in tiny_imagenet.quirks.items():
        src = (tiny_imagenet.root / rel).read_bytes()
        out = convert_image(src)
        assert out.action == "converted"
        with Image.open(io.BytesIO(out.image)) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (out.width, out.height))
        got = decode_rgb(out.image).astype(int)
        with Image.open(io.BytesIO(src)) as img:
            assert img.format == {"cmyk": "JPEG", "grayscale": "JPEG", "png": "PNG"}[kind]
            want = np.asarray(img.convert("RGB")).astype(int)
        # Only a q95 re-encode between them: small noise, no colour shift (an inverted CMYK would be off by ~100s).
        assert np.abs(got - want).mean() < 3.5, kind
        assert np.abs(got.mean(axis=(0, 1)) - want.mean(axis=(0, 1))).max() < 1.0, kind
        if kind == "grayscale":
            assert np.abs(got[..., 0] - got[..., 1]).max() <= 1 and np.abs(got[..., 0] - got[..., 2]).max() <= 1


def test_bad_files_are_skipped_with_a_reason(tiny_imagenet):
    for rel, word in tiny_imagenet.bad.items():
        with pytest.raises(SkipFile, match=word):
            convert_image((tiny_imagenet.root / rel).read_bytes())


def test_max_shorter_side_resizes_only_larger_images():
    big = jpeg(np.random.default_rng(1).integers(0, 255, (600, 900, 3), dtype=np.uint8))
    out = convert_image(big, max_shorter_side=256)
    assert (out.height, out.width, out.action) == (256, 384, "resized")
    small = jpeg(np.zeros((200, 300, 3), np.uint8))
    assert convert_image(small, max_shorter_side=256).image is small
    tall_png = io.BytesIO()
    Image.fromarray(np.zeros((1000, 400, 3), np.uint8)).save(tall_png, format="PNG")
    out = convert_image(tall_png.getvalue(), max_shorter_side=100)
    assert (out.height, out.width, out.action) == (250, 100, "resized")



def test_16_bit_grey_is_scaled_to_8_bits_not_clipped():
    flat = convert_image(png16(np.full((20, 30), 32640)))
    assert flat.action == "converted"
    assert abs(decode_rgb(flat.image).mean() - 32640 * 255 / 65535) < 1.0  # 127, where clipping gave 255
    ramp = np.tile(np.linspace(0, 65535, 256), (16, 1))
    got = decode_rgb(convert_image(png16(ramp)).image).astype(float)
    assert np.abs(got - (ramp * 255 / 65535)[..., None]).mean() < 1.5  # every level, not just the mean


def test_a_declared_size_over_the_limit_is_skipped_without_decoding(monkeypatch):
    decodes = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda img: decodes.append(img.size) or load(img))
    data = declaring(12000, 12000)
    assert len(data) < 5000
    with pytest.raises(SkipFile, match=r"declared size 12000x12000 \(144.0 megapixels\) is over --max-megapixels 64"):
        convert_image(data)
    assert decodes == []
    with pytest.raises(SkipFile, match="over --max-megapixels 100"):
        convert_image(data, max_megapixels=100)
    assert decodes == []
    ok = jpeg(np.zeros((300, 200, 3), np.uint8))
    assert convert_image(ok, max_megapixels=0.06).image is ok  # 0.06 MP = 300x200: at the limit, kept
    with pytest.raises(SkipFile, match="declared size 200x300"):
        convert_image(ok, max_megapixels=0.05)


def test_exif_orientation_is_ignored_pixels_stay_as_stored():
    # The decision pinned: like PIL and torchvision's ImageFolder, which ImageNet results are measured with.
    data = exif_rotated_jpeg()
    kept = convert_image(data)
    assert kept.image is data and (kept.action, kept.height, kept.width) == ("unchanged", 40, 60)
    grey = convert_image(exif_rotated_jpeg("L"))  # re-encoded: stored unrotated, and without the tag
    assert (grey.action, grey.height, grey.width) == ("converted", 40, 60)
    for out in (kept, grey):
        pixels = decode_rgb(out.image).astype(int)
        assert pixels.shape == (40, 60, 3)
        assert pixels[:, :30].mean() < 60 and pixels[:, 30:].mean() > 180  # dark half still on the left
    with Image.open(io.BytesIO(grey.image)) as img:
        assert 0x0112 not in img.getexif()


@pytest.mark.parametrize("height, width, s", [(715, 704, 480), (704, 715, 480), (600, 900, 256), (513, 2000, 512)])
def test_the_resize_target_is_the_reference_rescaled_size(height, width, s):
    # One definition of a rescaled size (vgg.augment): what prepare stores is what training and evaluation compute,
    # exact half-pixel ties included (715 x 704 at 480 stores 488 x 480).
    out = convert_image(jpeg(np.zeros((height, width, 3), np.uint8)), max_shorter_side=s)
    assert (out.height, out.width, out.action) == (*rescaled_size(height, width, s), "resized")
