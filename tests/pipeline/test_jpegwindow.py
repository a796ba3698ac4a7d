"""pipeline._jpegwindow (libjpeg-turbo's cropped, row-skipping, early-stopping decode) and the CPU decoder's use of it.

The window decode must give exactly the pixels a whole-image decode gives inside the window -- libjpeg-turbo's
islow IDCT and fancy upsampling are deterministic -- so the CPU backend's output is the same tensor whichever path
decoded it. Its own accuracy against the reference is test_decode.py's business.
"""

import io
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import jpeg_samples as J
from pipeline import decode_cpu
from pipeline.decode_cpu import CpuTrainDecoder
from vgg import augment as A

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def _libjpeg_headers_present() -> bool:
    """Whether the C compiler finds jpeglib.h: then the install must have built the extension."""
    try:
        return subprocess.run(["cc", "-E", "-x", "c", "-"], input=b"#include <jpeglib.h>\n",
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


HAVE_WINDOW = decode_cpu.decode_window is not None
needs_window = pytest.mark.skipif(not HAVE_WINDOW, reason="pipeline._jpegwindow not built (no libjpeg-turbo -dev)")


def test_the_extension_is_built_where_libjpeg_turbo_is():
    if not _libjpeg_headers_present():
        pytest.skip("no jpeglib.h for the C compiler: the CPU decoder runs without its window decode")
    assert HAVE_WINDOW, "jpeglib.h is present but pipeline._jpegwindow did not build: reinstall and read the warning"


def _jpeg(rng, h, w, subsampling=2, progressive=False, gray=False, quality=90) -> bytes:
    image = Image.fromarray(J.natural(rng, h, w))
    if gray:
        image = image.convert("L")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=subsampling, progressive=progressive)
    return buf.getvalue()


def _whole(data: bytes, reduce: int) -> np.ndarray:
    """PIL's decode (its own libjpeg-turbo), DCT-downscaled by ``reduce`` as PIL's draft does it."""
    image = Image.open(io.BytesIO(data))
    if reduce > 1:
        image.draft("RGB", (image.width // reduce, image.height // reduce))
    return np.asarray(image.convert("RGB"))


@needs_window
@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["444", "422", "420"])
@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("reduce", [1, 2, 8])
def test_window_equals_the_whole_decode_inside_it(subsampling, progressive, reduce):
    rng = np.random.default_rng(100 * subsampling + 10 * progressive + reduce)
    for trial in range(12):
        h, w = (int(v) for v in rng.integers(40, 700, 2))
        data = _jpeg(rng, h, w, subsampling, progressive, gray=trial % 6 == 5)
        whole = _whole(data, reduce)
        rows, cols = whole.shape[:2]
        # Windows anywhere, including ones touching the image's edges and one-pixel ones.
        y0, x0 = int(rng.integers(0, rows)), int(rng.integers(0, cols))
        y1, x1 = int(rng.integers(y0 + 1, rows + 1)), int(rng.integers(x0 + 1, cols + 1))
        if trial == 0:
            y0, x0, y1, x1 = 0, 0, rows, cols
        out = np.full((y1, min(x1 + decode_cpu.WINDOW_MARGIN, cols), 3), 7, np.uint8)
        done = decode_cpu.decode_window(data, out, reduce, x0, y0, x1, y1)
        assert done is not None, (h, w, y0, y1, x0, x1)
        xoffset, width = done
        assert width == cols and xoffset <= x0
        np.testing.assert_array_equal(out[y0:y1, x0:x1], whole[y0:y1, x0:x1], err_msg=f"{h}x{w} [{y0}:{y1}, {x0}:{x1}]")
        if y0 > 0:  # the rows above the window are skipped, not decoded
            assert (out[: y0 - 1] == 7).all()


@needs_window
def test_where_the_window_decode_does_not_apply_it_says_so():
    rng = np.random.default_rng(1)
    good = _jpeg(rng, 300, 400)
    out = np.zeros((300, 400, 3), np.uint8)
    assert decode_cpu.decode_window(good, out, 1, 0, 0, 400, 300) == (0, 400)
    cmyk = io.BytesIO()
    Image.fromarray(J.natural(rng, 300, 400)).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    for data in (cmyk.getvalue(), good[: len(good) // 2], good[:20] + rng.bytes(4000), b"hello" * 100, b""):
        assert decode_cpu.decode_window(data, out, 1, 0, 0, 400, 300) is None
    assert decode_cpu.decode_window(good, np.zeros((300, 402, 3), np.uint8), 1, 0, 0, 401, 300) is None  # outside
    assert decode_cpu.decode_window(good, np.zeros((200, 391, 3), np.uint8), 1, 0, 0, 390, 200) is None  # no room for the margin
    for bad in ((3, 0, 0, 10, 10), (1, 5, 0, 5, 10), (1, -1, 0, 10, 10)):  # reduce 3, empty window, negative
        with pytest.raises(ValueError, match="decode_window"):
            decode_cpu.decode_window(good, out, *bad)


@needs_window
def test_the_training_batch_is_the_same_tensor_without_the_window_decode(monkeypatch):
    """Every crop of the CPU backend: window decode vs its fallback (rows to the crop, or the whole image)."""
    rng = np.random.default_rng(2)
    sizes = [(375, 500), (500, 375), (256, 256), (333, 500), (1200, 1600), (260, 1040)]
    jpegs = [J.encode(J.natural(rng, h, w)) for h, w in sizes] * 4
    params = [A.sample_params(rng, h, w, 256, 512, 224) for h, w in sizes * 4]
    decoder = CpuTrainDecoder(crop=224, mean=[120.0, 115.0, 100.0], eigval=[0.2, 0.02, 0.01], eigvec=np.eye(3))
    calls = []
    real = decode_cpu.decode_window

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(decode_cpu, "decode_window", spy)
    windowed = decoder(jpegs, params)
    assert len(calls) == len(jpegs) and None not in calls  # every image went through the window decode
    monkeypatch.setattr(decode_cpu, "decode_window", None)
    fallback = decoder(jpegs, params)
    assert torch.equal(windowed, fallback)
