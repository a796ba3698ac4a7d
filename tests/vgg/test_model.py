"""The six networks of Table 1: exact structure, parameter counts, dense form, inits, torchvision interchange."""

import math

import pytest
import torch
import torchvision
from torch import nn

import vgg
from vgg.model import state_dict_mismatch
from vgg.paper import EXACT_GMACS, EXACT_PARAMS, LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, TRANSFER_CONVS

# Conv layers per block (Table 1), and the 1x1 layers of C.
BLOCKS = {"A": (1, 1, 2, 2, 2), "A-LRN": (1, 1, 2, 2, 2), "B": (2, 2, 2, 2, 2), "C": (2, 2, 3, 3, 3),
          "D": (2, 2, 3, 3, 3), "E": (2, 2, 4, 4, 4)}
TINY = dict(width=1 / 16, fc_width=32, num_classes=7, crop=64)


def build_meta(arch: str, **kw) -> vgg.VGG:
    """Full-size model without allocating its weights."""
    with torch.device("meta"):
        return vgg.build(arch, **kw)


@pytest.mark.parametrize("arch", vgg.ARCHS)
def test_parameter_counts_are_exact(arch):
    assert vgg.num_params(build_meta(arch)) == EXACT_PARAMS[arch]


@pytest.mark.parametrize("arch", vgg.ARCHS)
def test_multiply_adds_match_table1(arch):
    assert round(vgg.multiply_adds(build_meta(arch)) / 1e9, 3) == EXACT_GMACS[arch]


@pytest.mark.parametrize("arch", vgg.ARCHS)
def test_layer_structure_follows_table1(arch):
    model = build_meta(arch)
    convs = model.conv_layers()
    per_block = [0] * 5
    for name, _ in convs:
        per_block[int(name[4]) - 1] += 1
    assert tuple(per_block) == BLOCKS[arch]
    widths = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    for name, conv in convs:
        block, index = int(name[4]), int(name.split("_")[1])
        one_by_one = arch == "C" and block >= 3 and index == 3
        assert conv.kernel_size == ((1, 1) if one_by_one else (3, 3)), name
        assert conv.stride == (1, 1) and conv.padding == ((0, 0) if one_by_one else (1, 1)), name
        assert conv.out_channels == widths[block], name
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    mods = list(model.features)
    for i, m in enumerate(mods):  # every conv is followed by a ReLU
        if isinstance(m, nn.Conv2d):
            assert isinstance(mods[i + 1], nn.ReLU)
    lrns = [i for i, m in enumerate(mods) if isinstance(m, nn.LocalResponseNorm)]
    assert lrns == ([2] if arch == "A-LRN" else [])  # right after conv1_1 + ReLU
    head = list(model.classifier)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[2].p == head[5].p == 0.5
    assert (head[0].in_features, head[0].out_features, head[3].out_features, head[6].out_features) == (
        512 * 7 * 7, 4096, 4096, 1000)


def test_lrn_is_alexnets_formula():
    torch.manual_seed(0)
    a = torch.randn(2, 9, 5, 5, dtype=torch.float64) * 30
    model = vgg.build("A-LRN", **TINY).double()
    lrn = model.features[2]
    sq = a.pow(2)
    half = LRN_SIZE // 2
    expected = torch.empty_like(a)
    for c in range(a.shape[1]):  # b_c = a_c / (k + alpha * sum_{|c'-c| <= n/2} a_c'^2)^beta
        s = sq[:, max(0, c - half): c + half + 1].sum(1)
        expected[:, c] = a[:, c] / (LRN_K + LRN_ALPHA * s) ** LRN_BETA
    torch.testing.assert_close(lrn(a), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", vgg.ARCHS)
def test_dense_equals_fc_at_crop_size(arch):
    torch.manual_seed(0)
    model = vgg.build(arch, init="glorot", **TINY).double().eval()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    dense = model.forward_dense(x)
    assert dense.shape == (3, 7, 1, 1)
    torch.testing.assert_close(dense[:, :, 0, 0], model(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("crop", [32, 64, 96])
def test_dense_map_shape_on_larger_and_non_square_images(crop):
    model = vgg.build("A", width=1 / 16, fc_width=16, num_classes=5, crop=crop).eval()
    k = crop // 32
    assert model.classifier[0].in_features == model.out_channels * k * k
    h, w = crop + 64, crop + 160
    with torch.no_grad():
        scores = model.forward_dense(torch.randn(2, 3, h, w))
    assert scores.shape == (2, 5, h // 32 - k + 1, w // 32 - k + 1)
    assert torch.isfinite(scores).all()


def test_dense_cells_are_fc_forwards_of_aligned_windows_in_feature_space():
    # Each cell of the dense map is the FC head applied to the kxk window of the feature map at that offset.
    torch.manual_seed(1)
    model = vgg.build("B", init="glorot", **TINY).double().eval()
    x = torch.randn(1, 3, 128, 160, dtype=torch.float64)
    feats = model.forward_features(x)
    dense = model.forward_dense(x)
    k = model.fc_kernel
    for i in range(dense.shape[2]):
        for j in range(dense.shape[3]):
            fc = model.forward_head(feats[:, :, i:i + k, j:j + k])
            torch.testing.assert_close(dense[:, :, i, j], fc, rtol=1e-10, atol=1e-12)


def test_dense_rejects_images_smaller_than_crop():
    model = vgg.build("A", **TINY)
    with pytest.raises(ValueError, match="at least 64x64"):
        model.forward_dense(torch.randn(1, 3, 63, 200))


def test_fc_forward_rejects_other_sizes_and_points_to_dense():
    model = vgg.build("A", **TINY)
    with pytest.raises(ValueError, match="forward_dense"):
        model(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize("bad, match", [
    (dict(arch="F"), "unknown arch 'F': choose one of A, A-LRN, B, C, D, E"),
    (dict(arch="A", crop=225), "crop 225 is not a positive multiple of 32"),
    (dict(arch="A", crop=0), "not a positive multiple of 32"),
    (dict(arch="A", init="he"), "unknown init 'he'"),
    (dict(arch="A", dropout=1.0), "dropout must be in"),
])
def test_bad_arguments_give_one_clear_line(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        vgg.build(**bad)
    assert "\n" not in str(err.value)


def test_small_variants_scale_widths_and_head():
    model = vgg.build("D", width=0.25, fc_width=1024, num_classes=10, crop=32)
    assert [c.out_channels for _, c in model.conv_layers()][:3] == [16, 16, 32]
    assert model.out_channels == 128
    assert model.classifier[0].in_features == 128
    assert model.classifier[6].out_features == 10


def test_paper_init_std_and_zero_biases():
    torch.manual_seed(0)
    for std in (0.01, 0.1):
        model = vgg.build("A", width=0.5, fc_width=512, num_classes=10, crop=64, init="paper", init_std=std)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                assert torch.count_nonzero(m.bias) == 0
                if m.weight.numel() > 10_000:
                    assert m.weight.mean().abs() < 0.05 * std
                    assert m.weight.std().item() == pytest.approx(std, rel=0.05)


def test_glorot_init_bounds():
    torch.manual_seed(0)
    model = vgg.build("A", width=0.5, fc_width=512, num_classes=10, crop=64, init="glorot")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            rf = m.weight[0, 0].numel() if m.weight.dim() == 4 else 1
            bound = math.sqrt(6 / (m.weight.shape[1] * rf + m.weight.shape[0] * rf))
            assert m.weight.abs().max() <= bound
            if m.weight.numel() > 10_000:
                assert m.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
            assert torch.count_nonzero(m.bias) == 0


@pytest.mark.parametrize("arch", ["A-LRN", "B", "C", "D", "E"])
def test_init_from_a_copies_first_four_convs_and_the_fc_layers(arch):
    torch.manual_seed(0)
    net_a = vgg.build("A", init="glorot", **TINY)
    torch.manual_seed(1)
    deep = vgg.build(arch, init="glorot", **TINY)
    before = {k: v.clone() for k, v in deep.state_dict().items()}
    vgg.init_from_a(deep, net_a)
    src = dict(net_a.conv_layers()) | dict(net_a.fc_layers())
    dst = dict(deep.conv_layers()) | dict(deep.fc_layers())
    copied = (*TRANSFER_CONVS, "fc6", "fc7", "fc8")
    for name in copied:
        assert torch.equal(dst[name].weight, src[name].weight) and torch.equal(dst[name].bias, src[name].bias)
    own = {id(m.weight) for n, m in dst.items() if n not in copied}
    for key, value in deep.state_dict().items():  # every other layer keeps its own init
        module_weight = dict(deep.named_parameters()).get(key)
        if module_weight is not None and id(module_weight) in own:
            assert torch.equal(value, before[key]), key
    assert len(dst) - len(copied) == sum(BLOCKS[arch]) - 4


def test_init_from_a_rejects_other_shapes_and_sources():
    net_a = vgg.build("A", **TINY)
    with pytest.raises(ValueError, match="fc8 is") as err:
        vgg.init_from_a(vgg.build("E", **{**TINY, "num_classes": 9}), net_a)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="takes net A"):
        vgg.init_from_a(vgg.build("E", **TINY), vgg.build("B", **TINY))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["A", "B", "D", "E"])
def test_torchvision_state_dicts_interchange_with_identical_logits(arch):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, vgg.TORCHVISION_NAMES[arch])().eval()
    ours = vgg.build(arch, init="none").eval()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)
        # The reverse direction: our (freshly initialised) weights into torchvision's model.
        vgg.init_paper(ours)
        tv.load_state_dict(ours.state_dict())
        torch.testing.assert_close(tv(x), ours(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["A-LRN", "C"])
def test_incompatible_state_dict_is_one_clear_line(arch):
    with torch.device("meta"):
        tv = getattr(torchvision.models, "vgg11" if arch == "A-LRN" else "vgg16")()
    model = build_meta(arch)
    with pytest.raises(ValueError, match=rf"state dict does not fit VGG-{arch} .*(missing|unexpected|shape)") as err:
        model.load_state_dict(tv.state_dict())
    assert "\n" not in str(err.value)
    assert state_dict_mismatch(model, model.state_dict()) == ""


def test_wrong_classes_state_dict_names_the_shape():
    model = vgg.build("A", **TINY)
    other = vgg.build("A", **{**TINY, "num_classes": 3})
    with pytest.raises(ValueError, match=r"classifier.6.weight is \(3, 32\), expected \(7, 32\)"):
        model.load_state_dict(other.state_dict())


def test_a_thin_net_learns():
    # A real optimisation check: the paper's SGD settings fit a tiny fixed batch.
    torch.manual_seed(1)
    model = vgg.build("A", width=1 / 8, fc_width=64, num_classes=4, crop=32, init="glorot", dropout=0.0)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.3 and losses[-1] < 0.01
