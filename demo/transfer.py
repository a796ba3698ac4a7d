"""``make demo-transfer``: the paper's Appendix B in small, offline: features of a net trained on digits 0-4, used on
digits 5-9 with a few labelled images per class.

    python -m demo.transfer [--out demo-out/transfer] [--per-class 10] [--epochs 20] [--finetune-epochs 15]

Stages (each the command a user would type, its output kept in ``<out>/logs/``, reused when rerun):

1. ``python -m pipeline.digits``                      scikit-learn's digits as an image tree (no download)
2. the tree split by class: digits 0-4 in ImageNet's layout (the source task), digits 5-9 as class folders
3. ``python -m pipeline.prepare``                     the source task -> shards
4. ``python -m pipeline.prepare --layout folders``    the target task -> shards, ``--per-class`` labelled images per
                                                      class (20 % of them held out to choose C), the rest to test on
5. ``python -m trainer.run --config demo_digits``     net A, scaled down, trained on digits 0-4 only
6. ``python -m evaluation.transfer``                  (a) its FC7 features + linear SVMs, and (b) the same net at
                                                      random init + linear SVMs, stacked over Q = 32, 40, 48
7. ``python -m trainer.run --init-from``              (c) fine-tuned on the labelled 5-9 images: every layer, and
                                                      with the conv layers frozen (FC8 fresh for the 5 new classes)

then one table: mean class recall on the same test images of digits 5-9 for (a), (b) and (c). The fine-tuned nets
are scored here, densely at Q = 40 on the image alone (the net is trained without flips: a mirrored digit is another
digit), with ``evaluation.metrics.mean_class_recall``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "demo_digits"
SOURCE_DIGITS, TARGET_DIGITS = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
SCALES = ("32", "40", "48")  # the demo net's training range S in [32, 48]: its Q set (Caltech's stacking rule)
Q_FINETUNED = 40  # the fine-tuned nets' test scale: the middle of S, their validation scale
DONE = ".complete"
# Quiet Ray: no per-task log lines forwarded to the driver's console, no usage-stats notice.
QUIET = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1",
         "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


class DemoError(RuntimeError):
    """A stage failed; the message says which and where its log is."""


def python(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter (the project's environment)."""
    return [sys.executable, "-m", module, *args]


def stage(cmd: Sequence[str], what: str, out: Path, log: str) -> None:
    """Run one stage's command with its output to ``<out>/logs/<log>.log``: one line here, the log's tail on failure."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{log}.log"
    print(f"== {what}\n   $ {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    env = {**os.environ, **QUIET, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                               os.environ.get("PYTHONPATH")]))}
    with open(path, "w") as f:
        code = subprocess.call(list(cmd), cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        tail = path.read_text(errors="replace").splitlines()[-15:]
        print("\n".join("   | " + line for line in tail), file=sys.stderr)
        raise DemoError(f"{what} failed (exit code {code}, log {path}); rerun `make demo-transfer` to go on")
    print(f"   done in {time.monotonic() - start:.0f} s (log {path})", flush=True)


def split_by_class(digits: Path, source: Path, target: Path) -> None:
    """The rendered digits as two tasks: 0-4 in ImageNet's layout (train/ and a labelled flat val/), 5-9 as class
    folders (train and val images alike: the target's own split rule decides)."""
    if (source / DONE).exists() and (target / DONE).exists():
        return
    from pipeline.digits import WNIDS

    for d in (source, target):
        shutil.rmtree(d, ignore_errors=True)
    for digit, wnid in enumerate(WNIDS):
        home = source / "train" / wnid if digit in SOURCE_DIGITS else target / f"digit-{digit}"
        shutil.copytree(digits / "train" / wnid, home, dirs_exist_ok=True)
    with open(digits / "LOC_val_solution.csv") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]]
    (source / "val").mkdir(parents=True)
    for image_id, prediction in rows[1:]:
        digit = WNIDS.index(prediction.split()[0])
        if digit in SOURCE_DIGITS:
            shutil.copy(digits / "val" / f"{image_id}.JPEG", source / "val")
            kept.append([image_id, prediction])
        else:
            shutil.copy(digits / "val" / f"{image_id}.JPEG", target / f"digit-{digit}")
    with open(source / "LOC_val_solution.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(kept)
    for d in (source, target):
        (d / DONE).write_text("split by class\n")


def best_model(storage: Path, name: str) -> str:
    """The model directory of a training run's best checkpoint (what ``runs:/<id>`` resolves to)."""
    from trainer.checkpoint import find_latest

    latest = find_latest(str(storage), name)
    if latest is None or latest[1].best_checkpoint is None:
        raise DemoError(f"no finished training run {name} in {storage}")
    return latest[1].best_checkpoint


def random_twin(model_dir: str, dst: Path, seed: int = 0) -> str:
    """The same net as ``model_dir`` (card, shapes, Glorot init as its recipe) with fresh random weights."""
    import torch

    from vgg.card import load_model, save_model
    from vgg.model import build

    _, card = load_model(Path(model_dir))
    torch.manual_seed(seed)
    net = build(card.arch, card.num_classes, width=card.width, fc_width=card.fc_width, crop=card.crop, init="glorot")
    return str(save_model(dst, net, dataclasses.replace(card, info={"init": f"glorot, seed {seed}, untrained"})))


def transfer_recalls(report: Path) -> list[float]:
    """Test mean class recall (%) of each row of evaluation.transfer's split table, in row order (nets as given)."""
    with open(report / "transfer_splits.csv") as f:
        return [float(r["mean class recall"]) for r in csv.DictReader(f) if r["split"] == "1"]


def finetuned_recall(model_dir: str, shards: Path) -> float:
    """Mean class recall (%) of a fine-tuned net on the target's test images: dense at Q_FINETUNED, on the image
    alone unless the net was trained with flips."""
    import numpy as np

    from evaluation.metrics import mean_class_recall
    from evaluation.methods import DENSE, DENSE_NOFLIP
    from evaluation.shard import build_model, decoder_for, evaluate_images, read_shard
    from pipeline.manifest import load_manifest
    from vgg.card import load_model

    model, card = load_model(Path(model_dir))
    net = build_model(card, model.state_dict(), "cpu")
    decoder = decoder_for("cpu", card, "cpu")
    manifest = load_manifest(str(shards))
    predicted, labels = [], []
    for uri in manifest.shard_uris("test"):
        rows = read_shard(uri)
        probs = evaluate_images(net, decoder, rows["image"], rows["height"], rows["width"], rows["key"], Q_FINETUNED,
                                (DENSE,))
        predicted.append(probs[DENSE if card.flip else DENSE_NOFLIP].argmax(axis=1))
        labels.append(np.asarray(rows["label"]))
    return 100 * mean_class_recall(np.concatenate(predicted), np.concatenate(labels), manifest.num_classes)


def table(rows: Sequence[tuple[str, float]], per_class: int, tests: int) -> str:
    """The demo's result as a markdown table."""
    lines = [f"### Transfer: net A trained on digits 0-4, used on digits 5-9 ({per_class} labelled images per class, "
             f"{tests} test images)", "", "| method | mean class recall (%) |", "|---|---|"]
    return "\n".join(lines + [f"| {name} | {value:.1f} |" for name, value in rows]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo and print its table; a failed stage prints one line and returns 1."""
    parser = argparse.ArgumentParser(prog="python -m demo.transfer", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out/transfer", help="where everything goes (default: %(default)s)")
    parser.add_argument("--per-class", type=int, default=10,
                        help="labelled images per target class, 20 %% of them held out to choose C (default: 10)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs on digits 0-4 (default: 20)")
    parser.add_argument("--finetune-epochs", type=int, default=15, help="fine-tuning epochs (default: 15)")
    args = parser.parse_args(argv)
    if args.per_class < 2 or args.epochs < 1 or args.finetune_epochs < 1:
        parser.error("--per-class must be at least 2, --epochs and --finetune-epochs at least 1")
    out = Path(args.out) if os.path.isabs(args.out) else (ROOT / args.out)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    source, target = out / "digits-0-4", out / "digits-5-9"
    source_shards, target_shards, runs = out / "shards-0-4", out / "shards-5-9", out / "runs"
    train = ("--config", RECIPE, "--storage", str(runs), "--tracking-uri", tracking)
    started = time.monotonic()
    try:
        stage(python("pipeline.digits", "--dst", str(out / "digits")), "1/7 render the digits", out, "1-digits")
        print("== 2/7 split them by class: 0-4 (source task), 5-9 (target task)", flush=True)
        split_by_class(out / "digits", source, target)
        stage(python("pipeline.prepare", "--src", str(source), "--dst", str(source_shards)),
              "3/7 ingest digits 0-4", out, "3-prepare-source")
        stage(python("pipeline.prepare", "--layout", "folders", "--src", str(target), "--dst", str(target_shards),
                     "--train-per-class", str(args.per_class), "--num-splits", "1"),
              f"4/7 ingest digits 5-9: {args.per_class} labelled images per class, the rest to test on", out,
              "4-prepare-target")
        stage(python("trainer.run", *train, "--data", str(source_shards), "--name", "source-0-4", "--epochs",
                     str(args.epochs)), "5/7 train net A on digits 0-4", out, "5-train-source")
        trained = best_model(runs, "source-0-4")
        untrained = random_twin(trained, out / "random-init")
        stage(python("evaluation.transfer", "--model", trained, "--model", untrained, "--data", str(target_shards),
                     "--scales", *SCALES, "--out", str(out / "transfer"), "--tracking-uri", tracking,
                     "--run-name", "demo-transfer"),
              "6/7 features + linear SVMs: the trained net and the same net at random init", out, "6-transfer")
        recalls = transfer_recalls(out / "transfer" / "report")
        finetuned = []
        for name, flags in (("finetune-all", ()), ("finetune-fc", ("--freeze-convs",))):
            stage(python("trainer.run", *train, "--data", str(target_shards), "--name", name, "--init-from", trained,
                         "--epochs", str(args.finetune_epochs), "--batch-size", "8", "--lr", "0.003", *flags),
                  f"7/7 fine-tune on the labelled 5-9 images{' (conv layers frozen)' if flags else ''}", out,
                  f"7-{name}")
            finetuned.append(finetuned_recall(best_model(runs, name), target_shards))
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from pipeline.manifest import load_manifest

    tests = load_manifest(str(target_shards)).splits["test"].count
    rows = [("(a) features of the net trained on 0-4 + linear SVM", recalls[0]),
            ("(b) the same net at random init + linear SVM", recalls[1]),
            ("(c) fine-tuned from the 0-4 net, every layer", finetuned[0]),
            ("(c) fine-tuned from the 0-4 net, conv layers frozen", finetuned[1])]
    print("\n" + table(rows, args.per_class, tests))
    print(f"demo-transfer finished in {(time.monotonic() - started) / 60:.1f} min; runs in MLflow: "
          f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {tracking}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
