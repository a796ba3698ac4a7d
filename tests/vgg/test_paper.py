"""The paper as data: its numbers agree with each other and with Table 1, and the ladder is Sec. 3.1's."""

import pytest

from vgg import paper
from vgg.model import ARCHS
from vgg.paper import TrainScale

FIXED, FINE, JITTERED = paper.TRAIN_SCALES


def test_table_2_is_the_exact_counts_rounded():
    assert set(paper.TABLE2_PARAMS_M) == set(paper.EXACT_PARAMS) == set(paper.EXACT_GMACS) == set(ARCHS)
    assert {a: round(n / 1e6) for a, n in paper.EXACT_PARAMS.items()} == paper.TABLE2_PARAMS_M


def test_training_scales():
    assert (FIXED, FINE, JITTERED) == (TrainScale(256, 256), TrainScale(384, 384), TrainScale(256, 512))
    assert str(JITTERED) == "[256;512]" and not FINE.jittered
    assert JITTERED.at_crop(32) == TrainScale(37, 73) and paper.at_crop(paper.SCALE, paper.CROP) == 256


@pytest.mark.parametrize("arch", ARCHS)
def test_ladder_is_sec_3_1(arch):
    rungs = paper.ladder(arch)
    first = rungs[0]
    assert first.arch in paper.RANDOM_INIT and first.scale == FIXED and first.init is None and first.lr == 1e-2
    if arch in ("A", "A-LRN"):  # trained from random init: the net itself is the first rung
        assert first.arch == arch and len(rungs) == 3
    else:  # from net A's first four convs and FC layers, at A's LR
        assert first.arch == "A" and (rungs[1].arch, rungs[1].scale, rungs[1].init, rungs[1].lr) == (
            arch, FIXED, paper.TRANSFER, 1e-2)
    fine, jittered = rungs[-2:]
    assert (fine.arch, fine.scale, fine.init, fine.lr) == (arch, FINE, paper.ALL, 1e-3)
    assert (jittered.arch, jittered.scale, jittered.init, jittered.lr) == (arch, JITTERED, paper.ALL, 1e-3)
    assert [r.name for r in rungs[-2:]] == [f"{arch}-S384", f"{arch}-S256-512"]


def test_every_table_3_row_is_a_rung():
    for arch, scale in paper.TABLE3:
        rung = paper.rung_for(arch, scale)
        assert rung is not None and (rung.arch, rung.scale) == (arch, scale)
    assert paper.rung_for("D", TrainScale(300, 300)) is None


def test_unknown_arch_is_one_line():
    with pytest.raises(ValueError, match="unknown arch 'F': choose one of A, A-LRN, B, C, D, E"):
        paper.ladder("F")
