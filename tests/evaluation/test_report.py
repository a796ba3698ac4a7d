"""Combination arithmetic on stored posteriors (multi-scale, multi-crop & dense, fusion), the store, the tables."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.methods import COMBINED, DENSE, DENSE_NOFLIP, MULTICROP, MULTICROP_NOFLIP, uses_flip
from evaluation.models import LoadedModel, default_scales, label_models
from evaluation.posteriors import PosteriorStore, Posteriors, data_id, from_parquet, shard_limits, to_parquet
from evaluation.report import build_report, fusion_sets, method_posteriors
from pipeline.manifest import load_manifest
from vgg.card import ModelCard
from vgg.protocol import TrainScale

KEYS = np.array(["a", "b"])
LABELS = np.array([0, 1])


def model(arch: str, smin: int, smax: int, mid: str, flip: bool = True) -> LoadedModel:
    card = ModelCard(arch=arch, num_classes=3, crop=224, smin=smin, smax=smax, mean=(0.0, 0.0, 0.0), flip=flip)
    return LoadedModel(mid, mid, card, {}, mid, f"{arch}/{TrainScale(smin, smax)}")


# Per (model, Q, view): two images, three classes. Each posterior alone gets one image wrong; averages fix it.
P = {
    ("d", 256, DENSE): [[0.2, 0.5, 0.3], [0.1, 0.8, 0.1]],  # image a wrong
    ("d", 256, MULTICROP): [[0.6, 0.1, 0.3], [0.5, 0.4, 0.1]],  # image b wrong
    ("d", 384, DENSE): [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]],  # image b wrong
    ("d", 384, MULTICROP): [[0.3, 0.4, 0.3], [0.1, 0.6, 0.3]],  # image a wrong
    ("e", 256, DENSE): [[0.1, 0.2, 0.7], [0.0, 0.1, 0.9]],  # both wrong
    ("e", 256, MULTICROP): [[0.1, 0.2, 0.7], [0.0, 0.1, 0.9]],
}
for (m, q, v), probs in list(P.items()):
    if v == DENSE:
        P[(m, q, DENSE_NOFLIP)] = probs
# Net "n" was trained without flips: only its views without mirror images are stored, and they differ from "n"'s
# flip-averaged dense (stored too, as after a sweep with --flip on), so a table shows which one it used.
P[("n", 256, DENSE_NOFLIP)] = [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]  # both right
P[("n", 256, MULTICROP_NOFLIP)] = [[0.2, 0.3, 0.5], [0.2, 0.7, 0.1]]  # image a wrong
P[("n", 256, DENSE)] = [[0.1, 0.3, 0.6], [0.7, 0.2, 0.1]]  # both wrong


def loader(model_id: str, q: int, view: str) -> Posteriors:
    return Posteriors(KEYS, LABELS, np.asarray(P[(model_id, q, view)], np.float64))


def test_multi_scale_and_multicrop_dense_are_posterior_averages():
    ms = method_posteriors(loader, "d", [256, 384], DENSE)
    np.testing.assert_allclose(ms.probs, [[0.45, 0.35, 0.2], [0.35, 0.55, 0.1]])
    both = method_posteriors(loader, "d", [256], COMBINED)
    np.testing.assert_allclose(both.probs, [[0.4, 0.3, 0.3], [0.3, 0.6, 0.1]])
    allq = method_posteriors(loader, "d", [256, 384], COMBINED)  # 2 scales x 2 methods, equal weights
    np.testing.assert_allclose(allq.probs, np.mean([P[("d", q, v)] for q in (256, 384) for v in (DENSE, MULTICROP)],
                                                   axis=0))


def test_report_tables_from_constructed_posteriors():
    d, e = model("D", 256, 512, "d"), model("E", 256, 256, "e")
    scales = {"d": (256, 384), "e": (256,)}
    report = build_report([d, e], scales, [DENSE, MULTICROP], loader)
    cells = {(c.model.model_id, c.q, c.method): c for c in report.cells}
    assert len(cells) == 3 * 3  # (d,256), (d,384), (e,256) x dense, multi-crop, both
    assert cells[("d", 256, DENSE)].top1_err == 0.5 and cells[("d", 256, MULTICROP)].top1_err == 0.5
    assert cells[("d", 256, COMBINED)].top1_err == 0.0  # the two methods complement each other
    assert cells[("e", 256, DENSE)].top1_err == 1.0 and cells[("e", 256, DENSE)].top5_err == 0.0  # 3 classes < 5
    assert cells[("d", 256, DENSE)].extra == {"top1_err_noflip": 0.5, "top5_err_noflip": 0.0}
    t3, t4, t5, t6 = report.tables
    # Nets trained with flips (the paper's): dense flip-averaged, its unflipped half as validation sees it, 50 crops.
    assert [r[:4] for r in t3.rows][:3] == [["D", "[256;512]", 256, "dense, flip-averaged"],
                                            ["D", "[256;512]", 256, "dense"],
                                            ["D", "[256;512]", 256, "multi-crop, 50 crops/scale"]]
    assert len(t3.rows) == 9  # 3 (net, Q) x dense flip-averaged, dense alone, multi-crop
    assert t4.rows == [["D", "[256;512]", "256,384", "dense, flip-averaged", 0.0, 0.0],
                       ["D", "[256;512]", "256,384", "multi-crop, 50 crops/scale", 0.0, 0.0]]  # E: one scale, no row
    assert [r[3] for r in t5.rows] == ["dense, flip-averaged", "multi-crop, 50 crops/scale",
                                       "multi-crop & dense, flip-averaged"] * 2
    # Fusion of D (both scales) and E: dense = mean(D's 2-scale dense, E's dense).
    fused = 0.5 * (np.mean([P[("d", 256, DENSE)], P[("d", 384, DENSE)]], axis=0) + np.asarray(P[("e", 256, DENSE)]))
    expected = 100 * np.mean(fused.argmax(1) != LABELS)
    assert t6.rows[0][:2] == ["(D/[256;512]/256,384), (E/256/256)", "dense, flip-averaged"]
    assert t6.rows[0][2] == expected
    assert "| D | [256;512] | 256,384 | dense, flip-averaged | 0.00 | 0.00 |" in t4.markdown()
    assert t6.csv().splitlines()[0] == "combined models,method,top-1 err (%),top-5 err (%)"
    # MLflow's table view reads a column name with a dot as a path into nested data: it would render blank.
    assert not any("." in c for t in report.tables for c in t.columns)
    # Errors in %, as in the tables, under names MLflow groups by net.
    assert cells[("d", 256, DENSE)].metrics() == {"top1_err_pct": 50.0, "top5_err_pct": 0.0, "images": 2.0,
                                                  "top1_err_pct_noflip": 50.0, "top5_err_pct_noflip": 0.0}
    assert report.summary["D S256-512/multi-crop and dense Q256-384 top1_err_pct"] == 0.0
    assert report.summary["fusion/D S256-512 and E S256 dense top1_err_pct"] == expected



def test_a_net_trained_without_flips_is_evaluated_without_them_unless_told():
    n, d = model("A", 256, 256, "n", flip=False), model("D", 256, 512, "d")
    assert [uses_flip(s, False) for s in ("auto", "on", "off")] == [False, True, False]
    assert [uses_flip(s, True) for s in ("auto", "on", "off")] == [True, True, False]
    report = build_report([n], {"n": (256,)}, [DENSE, MULTICROP], loader)  # flips by default: as trained
    t3, _, t5, _ = report.tables
    assert [r[3:] for r in t3.rows] == [["dense", 0.0, 0.0], ["multi-crop, 25 crops/scale", 50.0, 0.0]]
    assert [r[3] for r in t5.rows] == ["dense", "multi-crop, 25 crops/scale", "multi-crop & dense"]
    cells = {c.method: c for c in report.cells}
    assert not any(c.flip for c in report.cells) and cells[DENSE].extra == {}  # no flip-averaged view to set beside
    np.testing.assert_allclose(method_posteriors(loader, "n", [256], COMBINED, flip=False).probs,
                               np.mean([P[("n", 256, DENSE_NOFLIP)], P[("n", 256, MULTICROP_NOFLIP)]], axis=0))
    # --flip on: the flip-averaged view, named so.
    forced = build_report([n], {"n": (256,)}, [DENSE], loader, flips={"n": True})
    assert [r[3:] for r in forced.tables[0].rows] == [["dense, flip-averaged", 100.0, 0.0], ["dense", 0.0, 0.0]]
    # Fusion of nets evaluated differently: each averages its own posteriors, and the table says which each used.
    mixed = build_report([n, d], {"n": (256,), "d": (256,)}, [DENSE], loader)
    (row,) = mixed.tables[3].rows
    assert row[:2] == ["(A/256/256 without flips), (D/[256;512]/256 with flips)", "dense"]
    fused = 0.5 * (np.asarray(P[("n", 256, DENSE_NOFLIP)]) + np.asarray(P[("d", 256, DENSE)]))
    assert row[2] == 100 * np.mean(fused.argmax(1) != LABELS)

def test_fusion_sets():
    assert fusion_sets(1) == []
    assert fusion_sets(3) == [(0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert fusion_sets(6) == [tuple(range(6))]


def test_default_scales_follow_the_paper():
    card = lambda smin, smax, crop=224: ModelCard("D", 10, crop, smin, smax, (0.0, 0.0, 0.0))  # noqa: E731
    assert default_scales(card(256, 256)) == (224, 256, 288)
    assert default_scales(card(384, 384)) == (352, 384, 416)
    assert default_scales(card(256, 512)) == (256, 384, 512)
    assert default_scales(card(32, 32, crop=32)) == (32, 64)  # S-32 = 0: no crop fits, left out


def test_same_labels_get_ids():
    a, b = model("D", 256, 256, "x1"), model("D", 256, 256, "x2")
    assert [m.label for m in label_models([a, b])] == ["D/256 (x1)", "D/256 (x2)"]


@pytest.mark.ray  # prepared_shards ingests through Ray
def test_store_round_trip_and_what_is_missing(tmp_path, prepared_shards):
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=3).astype(np.float32)
    back = from_parquet(to_parquet(["k2", "k0", "k1"], np.array([1, 0, 3]), probs))
    np.testing.assert_array_equal(back.probs, probs)
    assert list(back.keys) == ["k2", "k0", "k1"] and list(back.labels) == [1, 0, 3]
    store = PosteriorStore(str(tmp_path), "val-x")
    assert store.missing("m", 40, [DENSE, MULTICROP], [0, 1]) == {0: (DENSE, MULTICROP), 1: (DENSE, MULTICROP)}
    store.write("m", 40, DENSE, 0, ["k2", "k0", "k1"], np.array([1, 0, 3]), probs)
    store.write("m", 40, DENSE, 1, ["k3"], np.array([2]), probs[:1])
    assert store.missing("m", 40, [DENSE, MULTICROP], [0, 1]) == {0: (MULTICROP,), 1: (MULTICROP,)}
    assert PosteriorStore(str(tmp_path), "val-x").missing("m", 40, [DENSE], [0, 1]) == {}  # found by a new reader
    got = store.read("m", 40, DENSE, [0, 1])
    assert list(got.keys) == ["k0", "k1", "k2", "k3"]  # key order, whatever the shard order
    np.testing.assert_array_equal(got.probs[0], probs[1])
    manifest = load_manifest(prepared_shards)
    assert data_id(manifest, "val") != data_id(manifest, "val", limit=4) != data_id(manifest, "train")
    assert shard_limits([5, 5, 5], 7) == [5, 2, 0] and shard_limits([5, 5], None) == [5, 5]


def stored_sweep(tmp_path, n: int = 1000, c: int = 500) -> tuple[list[LoadedModel], dict, PosteriorStore]:
    """Six nets x three Q x every view of random posteriors in a store on disk (the sweep's shape at full size)."""
    rng = np.random.default_rng(0)
    keys, labels = np.array([f"k{i:05d}" for i in range(n)]), rng.integers(0, c, n)
    nets = [LoadedModel(f"{a}{s}", f"{a}{s}", ModelCard(arch=a, num_classes=c, crop=224, smin=s, smax=s,
                                                        mean=(0.0, 0.0, 0.0)), {}, f"{a}{s}", f"{a}/{s}")
            for a, s in (("A", 256), ("B", 256), ("C", 384), ("D", 256), ("E", 256), ("E", 384))]
    scales = {m.model_id: default_scales(m.card) for m in nets}
    store = PosteriorStore(str(tmp_path), "val-x")
    for m in nets:
        for q in scales[m.model_id]:
            for view in (DENSE, DENSE_NOFLIP, MULTICROP):
                store.write(m.model_id, q, view, 0, keys, labels, rng.random((n, c), dtype=np.float32))
    store.read(nets[0].model_id, scales[nets[0].model_id][0], DENSE, [0])  # the reader's first-use imports, not data
    return nets, scales, store


def traced_peak(fn) -> tuple[object, int]:
    """What ``fn()`` returns and the peak of the memory it allocated (numpy's arrays included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_report_combines_posteriors_streaming(tmp_path):
    """A full sweep's posteriors do not fit in memory together (54 tables of 200 MB at 50,000 images x 1,000
    classes): the report holds a few posteriors at a time whatever the number of nets, scales and views."""
    nets, scales, store = stored_sweep(tmp_path)
    one = 1000 * 500 * 8  # one posterior table in float64, the precision combinations are averaged in
    report, peak = traced_peak(lambda: build_report(nets, scales, [DENSE, MULTICROP],
                                                    lambda mid, q, view: store.read(mid, q, view, [0])))
    assert len(report.cells) == 6 * 3 * 3 and report.tables[-1].rows  # every cell, and the six nets fused
    # The running sums of a fusion and of a multi-scale average, the table being read and its copies: 5-7 tables
    # measured. Holding every load and stacking the parts of each combination took 22.
    assert peak < 10 * one, f"the report peaked at {peak / one:.1f} float64 posterior tables"


def test_the_sweeps_loader_keeps_a_few_posteriors(tmp_path):
    """The report's loader keeps the last two loads (a (net, Q)'s dense and multi-crop, asked for again at once by
    their combination), never the whole sweep's."""
    from evaluation.posteriors import KEEP_LOADED

    nets, scales, store = stored_sweep(tmp_path)
    one = 1000 * 500 * 4  # one stored float32 table
    load = store.loader([0])
    first = load(nets[0].model_id, scales[nets[0].model_id][0], DENSE)
    assert load(nets[0].model_id, scales[nets[0].model_id][0], DENSE) is first  # kept

    def load_all() -> int:
        import tracemalloc

        for m in nets:
            for q in scales[m.model_id]:
                for view in (DENSE, DENSE_NOFLIP, MULTICROP):
                    load(m.model_id, q, view)
        return tracemalloc.get_traced_memory()[0]

    held, _ = traced_peak(load_all)
    assert KEEP_LOADED == 2 and held < (KEEP_LOADED + 1) * one, f"the loader holds {held / one:.1f} tables"


def test_average_streams_the_same_numbers_as_the_mean_of_the_stack():
    rng = np.random.default_rng(1)
    parts = [rng.random((7, 5), dtype=np.float32) for _ in range(6)]
    from evaluation.methods import average

    streamed = average(p for p in parts)
    np.testing.assert_array_equal(streamed, np.mean(np.stack([p.astype(np.float64) for p in parts]), axis=0))
    with pytest.raises(ValueError, match="different shapes"):
        average([parts[0], parts[0][:3]])
    with pytest.raises(ValueError, match="nothing"):
        average(iter([]))
