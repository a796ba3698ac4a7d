"""The decoders against the reference transforms, alone and inside a realistic call sequence, on the same JPEG bytes.

The reference input is the same bytes decoded by PIL; the params are drawn once with ``vgg.augment.sample_params``.
Differences are on the 0-255 scale, over all pixels and channels of a batch of natural-looking images (see
jpeg_samples.py). Stated tolerances (mean absolute difference, 99th percentile), with what was measured when written:

- DALI (CPU operators): same libjpeg-turbo decode, same antialiased-linear filter on the same sub-pixel grid, float
  throughout: MAD < 0.1, p99 < 0.5 (measured MAD <= 0.003, p99 <= 0.1).
- CPU backend, full decode: the window is resampled exactly on the reference's grid with the same filter, but in
  uint8 (fixed-point weights, one rounding): MAD < 0.5, p99 < 1.25 (measured MAD 0.28-0.35, p99 0.79-1.0; max 1.0).
- CPU backend where libjpeg downscales in the DCT domain (window >= 2x the crop): MAD < 1.0, p99 < 3.0 (measured MAD
  0.3-0.7, p99 up to 2.4).
- DALI on a GPU vs DALI on the CPU (nvJPEG's IDCT and, on its hardware decoder, chroma upsampling vs libjpeg-turbo's):
  MAD < 1.0, p99 < 5.0 -- not yet measured (no GPU where this was written).

Exact where it should be: flips mirror exactly, colour shift + mean on a constant image within 1e-3, shapes, dtypes
and devices exactly.
"""

import ast
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jpeg_samples as J
from pipeline import decode as D
from pipeline.decode_cpu import dct_reduction
from vgg import augment as A

ROOT = Path(__file__).resolve().parents[2]
MEAN = np.array([122.7, 116.7, 104.0])
STD = np.array([58.4, 57.1, 57.4])
EIGVAL = 255 * np.array([55.5, 4.8, 1.2])  # ImageNet-like covariance eigenvalues on the 0-255 scale
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
CROP = 224

TOL = {"dali": (0.1, 0.5), "cpu": (0.5, 1.25), "cpu-dct": (1.0, 3.0)}
HAVE_DALI = D.dali_importable()
BACKENDS = ["cpu", pytest.param("dali", marks=pytest.mark.skipif(not HAVE_DALI, reason="DALI not installed"))]
# torchvision 0.29 deprecates the codecs the CPU backend prefers (it falls back to PIL once they are gone).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# A realistic batch: landscape, portrait, square with shorter side == Smin, extreme 1:4 both ways, and large photos
# (whose crop windows are >= 2x the crop: the CPU backend's DCT-downscaled path).
SIZES = [(375, 500), (500, 375), (256, 256), (256, 1024), (1024, 256), (333, 500), (1200, 1600), (1500, 2000)]


def tolerance(backend: str, height: int, width: int, h: int, w: int) -> tuple[float, float]:
    """The stated tolerance for one item (the CPU backend's DCT-downscaled items have their own)."""
    if backend == "cpu" and dct_reduction(min(height / h, width / w)) > 1:
        return TOL["cpu-dct"]
    return TOL[backend]


def stats(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(mean absolute difference, 99th percentile) on the 0-255 scale."""
    d = (out.detach().cpu().double() - ref).abs().flatten()
    return d.mean().item(), d.quantile(0.99).item()


@pytest.fixture(scope="module")
def batch():
    """JPEG bytes, keys and the reference's decoded input for SIZES."""
    rng = np.random.default_rng(0)
    jpegs = [J.encode(J.natural(rng, h, w)) for h, w in SIZES]
    return jpegs, [f"img{i}" for i in range(len(jpegs))], [J.decode_reference(b) for b in jpegs]


_decoders: dict = {}


def train_decoder(backend: str, crop: int = CROP, std=None, device: str = "cpu"):
    """One decoder per configuration for the whole file (a DALI pipeline is built once, as in training)."""
    key = ("train", backend, crop, std is None, device)
    if key not in _decoders:
        # batch_size=4 < len(SIZES): the DALI decoder must split a call into chunks and run a short last one.
        _decoders[key] = D.make_train_decoder(backend, crop=crop, mean=MEAN, eigval=EIGVAL, eigvec=EIGVEC, std=std,
                                              device=device, batch_size=4)
    return _decoders[key]


def eval_decoder(backend: str, device: str = "cpu"):
    key = ("eval", backend, device)
    if key not in _decoders:
        _decoders[key] = D.make_eval_decoder(backend, mean=MEAN, device=device, batch_size=4)
    return _decoders[key]


# ---- inside the real call sequence ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_batch_matches_reference_inside_the_pipeline(backend, batch):
    jpegs, keys, decoded = batch
    # As the loader does it: per-image generators from (seed, epoch, key), sizes from the stored columns.
    params = [A.sample_params(np.random.default_rng(A.seed_for(7, 3, k)), h, w, 256, 512, CROP)
              for k, (h, w) in zip(keys, SIZES)]
    # Pin the corners of the valid range too: top-left, and the far corner at the largest scale.
    h, w = A.rescaled_size(*SIZES[0], 512)
    params[0] = A.AugmentParams(256, 0, 0, False, params[0].alphas)
    params[5] = A.AugmentParams(512, h - CROP, w - CROP, True, params[5].alphas)
    out = train_decoder(backend)(jpegs, params, keys=keys)
    assert out.shape == (len(jpegs), 3, CROP, CROP) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all()
    for i, (image, p, (height, width)) in enumerate(zip(decoded, params, SIZES)):
        ref = A.train_reference(image, p, CROP, MEAN, EIGVAL, EIGVEC)
        mad, p99 = stats(out[i], ref)
        max_mad, max_p99 = tolerance(backend, height, width, *A.rescaled_size(height, width, p.scale))
        assert mad < max_mad and p99 < max_p99, f"{backend} {i} {height}x{width} S={p.scale}: {mad=:.3f} {p99=:.3f}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_scale_equal_to_the_shorter_side(backend, batch):
    # S == shorter side: the rescale is the identity along that side; the crop is a pure window of the decode.
    jpegs, keys, decoded = batch
    rng = np.random.default_rng(1)
    params = [A.sample_params(rng, 256, 256, 256, 256, CROP), A.sample_params(rng, 256, 1024, 256, 256, CROP)]
    out = train_decoder(backend)([jpegs[2], jpegs[3]], params)
    for o, image, p in zip(out, [decoded[2], decoded[3]], params):
        mad, p99 = stats(o, A.train_reference(image, p, CROP, MEAN, EIGVAL, EIGVEC))
        assert mad < TOL[backend][0] and p99 < TOL[backend][1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q", [256, 384])
def test_eval_matches_reference(backend, q, batch):
    jpegs, keys, decoded = batch
    outs = eval_decoder(backend)(jpegs, q, keys=keys)
    assert len(outs) == len(jpegs)
    for i, (o, image, (height, width)) in enumerate(zip(outs, decoded, SIZES)):
        ref = A.eval_reference(image, q, MEAN)
        assert o.shape == ref.shape and o.dtype == torch.float32 and min(o.shape[1:]) == q
        mad, p99 = stats(o, ref)
        max_mad, max_p99 = tolerance(backend, height, width, *A.rescaled_size(height, width, q))
        assert mad < max_mad and p99 < max_p99, f"{backend} item {i} {height}x{width} Q={q}: {mad=:.3f} {p99=:.3f}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_sizes_follow_the_reference_rounding(backend):
    # 301 * 100 / 200 = 150.5: Python rounds half to even (150); a decoder computing its own size could say 151.
    rng = np.random.default_rng(2)
    jpegs = [J.encode(J.natural(rng, 200, 301)), J.encode(J.natural(rng, 301, 200))]
    assert [tuple(o.shape) for o in eval_decoder(backend)(jpegs, 100)] == [(3, 100, 150), (3, 150, 100)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size, scale, top, left", [((375, 500), 377, 78, 211), ((500, 375), 377, 211, 78),
                                                    ((375, 500), 376, 0, 0)])
def test_slight_upscale_with_a_window_as_long_as_its_output(backend, size, scale, top, left):
    # S just above the shorter side, and a crop whose window is as many pixels as the rescaled rows/columns it
    # reaches: a resampler that skips an axis of equal input and output length returns that axis unscaled.
    rng = np.random.default_rng(6)
    jpeg = J.encode(J.natural(rng, *size))
    p = A.AugmentParams(scale, top, left, True, (0.01, -0.02, 0.03))
    out = train_decoder(backend)([jpeg], [p])
    mad, p99 = stats(out[0], A.train_reference(J.decode_reference(jpeg), p, CROP, MEAN, EIGVAL, EIGVEC))
    assert mad < TOL[backend][0] and p99 < TOL[backend][1], f"{mad=:.3f} {p99=:.3f}"


# ---- each transform alone --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_mirrors_exactly(backend, batch):
    jpegs, _, _ = batch
    p = A.sample_params(np.random.default_rng(3), *SIZES[0], 256, 512, CROP)
    plain, flipped = (A.AugmentParams(p.scale, p.top, p.left, f, p.alphas) for f in (False, True))
    out = train_decoder(backend)([jpegs[0], jpegs[0]], [plain, flipped])
    torch.testing.assert_close(out[1], out[0].flip(-1), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("std", [None, STD])
def test_colour_shift_and_mean_are_exact_on_a_constant_image(backend, std):
    jpeg = J.encode(J.constant(300, 400, (200, 100, 50)))
    image = J.decode_reference(jpeg)
    params = [A.AugmentParams(256, 5, 7, True, (0.05, 0.0, -0.1)),
              A.AugmentParams(500, 100, 300, False, (-0.2, 0.1, 0.3)),
              A.AugmentParams(224, 0, 74, False, (0.0, 0.0, 0.0))]
    out = train_decoder(backend, std=std)([jpeg] * 3, params)
    for o, p in zip(out, params):
        torch.testing.assert_close(o.double(), A.train_reference(image, p, CROP, MEAN, EIGVAL, EIGVEC, std), rtol=0,
                                   atol=1e-3)


def _other_encoding(kind: str, image: np.ndarray) -> bytes:
    if kind == "grayscale":
        return J.encode(image[..., 1])
    buf = io.BytesIO()
    if kind == "cmyk":
        Image.fromarray(image).convert("CMYK").save(buf, format="JPEG", quality=90)
    else:  # ImageNet has a PNG named .JPEG
        Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["grayscale", "cmyk", "png"])
def test_other_encodings_give_rgb_like_the_reference(backend, kind):
    rng = np.random.default_rng(4)
    jpeg = _other_encoding(kind, J.natural(rng, 300, 400))
    p = A.sample_params(rng, 300, 400, 256, 300, CROP)
    out = train_decoder(backend)([jpeg], [p])
    mad, p99 = stats(out[0], A.train_reference(J.decode_reference(jpeg), p, CROP, MEAN, EIGVAL, EIGVEC))
    assert mad < TOL[backend][0] and p99 < TOL[backend][1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoded_flips_and_offsets_follow_the_params(backend):
    # Red = column, green = row (before rescaling, on a 256x256 image): after a rescale by 256/S the crop's corner
    # pixel is (offset + 0.5) * 256/S - 0.5, so the output alone reveals the crop position, and a flip reverses the
    # red ramp. Draws as in training; the decoded positions must follow the params one by one, hence in distribution.
    grid = np.zeros((256, 256, 3), np.uint8)
    grid[..., 0], grid[..., 1], grid[..., 2] = np.arange(256)[None, :], np.arange(256)[:, None], 128
    jpeg, crop, zero = J.encode(grid, quality=95), 64, np.zeros(3)
    params = [A.sample_params(np.random.default_rng(A.seed_for(0, 0, str(k))), 256, 256, 64, 128, crop, pca_std=0.0)
              for k in range(200)]
    decoder = D.make_train_decoder(backend, crop=crop, mean=zero, eigval=EIGVAL, eigvec=EIGVEC, device="cpu",
                                   batch_size=64)
    out = decoder([jpeg] * len(params), params)
    flips, lefts, tops = [], [], []
    for o, p in zip(out, params):
        red = o[0, crop // 2].double()
        flipped = bool(red[0] > red[-1])
        scale = 256 / p.scale
        first = red[-1] if flipped else red[0]  # the original crop's left column
        flips.append(flipped)
        lefts.append((first.item() + 0.5) / scale - 0.5)
        tops.append((o[1, 0, crop // 2].item() + 0.5) / scale - 0.5)
        assert flipped == p.flip
    lefts, tops = np.array(lefts), np.array(tops)
    want_left, want_top = np.array([p.left for p in params]), np.array([p.top for p in params])
    assert np.abs(lefts - want_left).max() < 1.5 and np.abs(tops - want_top).max() < 1.5
    n = len(params)
    assert abs(np.mean(flips) - 0.5) < 4 * 0.5 / np.sqrt(n)
    # Offsets relative to their valid range are uniform on [0, 1]: mean 1/2, sd 1/sqrt(12).
    rel = lefts / np.array([p.scale - crop for p in params]).clip(1)
    assert abs(rel.mean() - 0.5) < 4 / np.sqrt(12 * n) and rel.min() < 0.1 and rel.max() > 0.9


# ---- API, robustness -------------------------------------------------------------------------------------------


def test_backend_and_device_selection(monkeypatch):
    assert D.resolve_device(None) == D.resolve_device("auto")
    assert D.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    # "auto": DALI only where it runs on a GPU; on a CPU device the CPU backend (the faster one per core).
    assert D.resolve_backend("auto", "cpu") == "cpu"
    assert D.make_train_decoder(crop=CROP, mean=MEAN, eigval=EIGVAL, eigvec=EIGVEC, device="cpu").backend == "cpu"
    assert D.make_eval_decoder(mean=MEAN, device="cpu").backend == "cpu"
    assert D.resolve_backend("auto") == ("dali" if HAVE_DALI and torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert D.resolve_backend("auto", "cuda") == ("dali" if HAVE_DALI else "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        D.resolve_backend("opencv")
    # A machine without DALI: "auto" falls back to the CPU backend, an explicit "dali" says what is missing.
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    assert D.resolve_backend("auto") == "cpu"
    assert D.make_train_decoder(crop=CROP, mean=MEAN, eigval=EIGVAL, eigvec=EIGVEC, device="cpu").backend == "cpu"
    with pytest.raises(ImportError, match="needs NVIDIA DALI"):
        D.resolve_backend("dali")


def test_modules_without_dali_do_not_import_it():
    # pipeline.decode, the CPU backend and their shared helpers must import on machines without DALI: no top-level
    # nvidia import.
    for name in ("decode.py", "decode_cpu.py", "jpeg.py"):
        tree = ast.parse((ROOT / "pipeline" / name).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
        assert not [m for m in names if m.startswith("nvidia")], name


@pytest.mark.parametrize("backend", BACKENDS)
def test_any_batch_size_and_bytes_or_arrays(backend, batch):
    jpegs, _, decoded = batch
    rng = np.random.default_rng(5)
    small = [J.encode(J.natural(rng, 300, 400)) for _ in range(9)]
    params = [A.sample_params(rng, 300, 400, 256, 512, CROP) for _ in small]
    decoder = train_decoder(backend)  # DALI batch_size 4: 9 images run as 4 + 4 + 1
    whole = decoder(small, params)
    assert whole.shape == (9, 3, CROP, CROP)
    one = decoder([np.frombuffer(small[8], np.uint8)], params[8:])  # Arrow/numpy buffers work like bytes
    torch.testing.assert_close(one[0], whole[8], rtol=0, atol=1e-4)
    assert decoder([], []).shape == (0, 3, CROP, CROP)


BROKEN = {
    "truncated": lambda good: good[: len(good) // 2],
    "garbage after the header": lambda good: good[:20] + np.random.default_rng(0).bytes(4000),
    "not an image": lambda good: b"hello" * 100,
    "empty": lambda good: b"",
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_image_is_named_in_one_line(backend, kind, batch):
    jpegs, _, _ = batch
    good = jpegs[0]
    images = [good, good, BROKEN[kind](good), good]
    # Crops at the bottom: a ROI decode of a truncated file must still need the missing part.
    h, w = A.rescaled_size(*SIZES[0], 256)
    params = [A.AugmentParams(256, h - CROP, w - CROP, False, (0.0, 0.0, 0.0))] * 4
    decoder = train_decoder(backend)
    with pytest.raises(D.DecodeError, match=r"^item 2 \(key 'c'\): ") as info:
        decoder(images, params, keys=list("abcd"))
    assert "\n" not in str(info.value)
    with pytest.raises(D.DecodeError, match=r"^item 2: "):
        eval_decoder(backend)(images, 256)
    assert decoder([good], params[:1]).shape == (1, 3, CROP, CROP)  # still usable afterwards


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_drawn_for_another_size_are_refused(backend, batch):
    jpegs, _, _ = batch
    p = A.sample_params(np.random.default_rng(0), 1500, 2000, 480, 512, CROP)  # not for a 375x500 image
    p = A.AugmentParams(p.scale, 300, 600, p.flip, p.alphas)
    with pytest.raises(ValueError, match=r"item 0 \(key 'x'\): params .* do not fit"):
        train_decoder(backend)([jpegs[0]], [p], keys=["x"])


# ---- GPU -------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not HAVE_DALI, reason="DALI not installed")
def test_dali_gpu_matches_dali_cpu(batch):
    jpegs, keys, _ = batch
    params = [A.sample_params(np.random.default_rng(A.seed_for(1, 0, k)), h, w, 256, 512, CROP)
              for k, (h, w) in zip(keys, SIZES)]
    gpu = train_decoder("dali", device="cuda")
    out = gpu(jpegs, params, keys=keys)
    assert out.device.type == "cuda" and out.shape == (len(jpegs), 3, CROP, CROP) and out.dtype == torch.float32
    ref = train_decoder("dali")(jpegs, params)
    for i in range(len(jpegs)):
        mad, p99 = stats(out[i], ref[i].double())
        assert mad < 1.0 and p99 < 5.0, f"item {i}: {mad=:.3f} {p99=:.3f}"
    evals, evals_cpu = eval_decoder("dali", "cuda")(jpegs, 256), eval_decoder("dali")(jpegs, 256)
    for o, r in zip(evals, evals_cpu):
        assert o.device.type == "cuda" and o.shape == r.shape
        mad, p99 = stats(o, r.double())
        assert mad < 1.0 and p99 < 5.0


@pytest.mark.gpu
@needs_cuda
def test_cpu_backend_hands_batches_to_cuda(batch):
    jpegs, keys, _ = batch
    params = [A.sample_params(np.random.default_rng(A.seed_for(1, 0, k)), h, w, 256, 512, CROP)
              for k, (h, w) in zip(keys, SIZES)]
    out = train_decoder("cpu", device="cuda")(jpegs, params)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), train_decoder("cpu")(jpegs, params), rtol=0, atol=1e-4)


# ---- the benchmark still runs ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_quick_runs(tmp_path):
    out = tmp_path / "decode.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    for name in ("imagenet_like", "large"):
        rates = result["sets"][name]["train_img_per_s"]
        assert rates["ours_cpu"] > 0 and rates["torchvision_baseline"] > 0
    assert "ours_cpu" in run.stdout
