"""The paper's ladder of training runs as one command (Sec. 3.1): ``python -m trainer.recipe paper --arch E``.

    A (S=256, random init)
      -> E (S=256, first four convs + FCs from A)
        -> E (S=384, all weights from E-256, LR 1e-3)
          -> E (S in [256, 512], all weights from E-384, LR 1e-3)

A and A-LRN start from random init themselves (no net A rung before them). The rungs are ``vgg.paper.ladder``.
Each rung is a ``trainer.run`` job with its own MLflow run, all children of one parent run for the ladder; a rung
starts from the previous rung's best checkpoint (validation top-1). Any other flag of ``trainer.run`` applies to
every rung (``--data``, ``--storage``, ``--workers``, ``--smoke``, ...); the ones the ladder sets per rung (net, S,
LR, init source and layers) are refused. Rerun the same command and completed rungs are skipped; an interrupted
rung resumes from its checkpoint. With ``--smoke`` the scales shrink with the crop as the smoke preset does (S/crop
kept at the paper's ratios).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.cli import OneLineParser
from trainer.config import build_parser, compose
from trainer.run import JobError, summary, tracking_uri, train
from trainer.tracking import Tracker
from vgg.model import ARCHS
from vgg.paper import ladder

PROG = "python -m trainer.recipe"
EPILOG = """required:
  --data MANIFEST     the shards' manifest (pipeline.prepare's --dst: a local path or s3://...), unless --smoke
                      (scikit-learn's digits, prepared on first use)

every other flag of trainer.run applies to each rung (python -m trainer.run --help), e.g.
  --storage URI       where checkpoints go (default: ./runs; on a cluster, s3://bucket/prefix)
  --tracking-uri URI  the MLflow server (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)
  --workers N         Ray Train workers per rung (default: 1)
  --name PREFIX       the rungs' run names start with it (default: paper-<arch>)

refused (the ladder sets them on each rung): --config, --scale, --scale-jitter, --lr, --init-from,
--init-layers"""
LADDER_TAG = "verydeep.ladder"
# What the ladder sets on each rung: the same flag given to the ladder would be overridden, so it is refused.
LADDER_SETS = ("config", "arch", "scale", "scale_jitter", "lr", "init_from", "init_layers")


@dataclass(frozen=True)
class Step:
    """One rung as ``trainer.run`` fields: its name suffix, the fields it sets, how it takes the previous weights."""

    name: str
    fields: dict[str, Any]
    init_layers: str | None  # None: random init (the first rung)


def paper_ladder(arch: str, crop: int) -> list[Step]:
    """The rungs for ``arch`` as config fields; scales are the paper's times crop/224 (a smoke crop keeps the ratios)."""
    steps = []
    for rung in ladder(arch):
        s = rung.scale.at_crop(crop)
        steps.append(Step(rung.name, {"arch": rung.arch, "scale": (s.smin, s.smax) if s.jittered else s.smin, "lr": rung.lr}, rung.init))
    return steps


def rung_flags(flags: dict[str, Any], prefix: str, step: Step, previous: str | None) -> dict[str, Any]:
    """The fields of one rung's ``trainer.run`` job: the ladder's flags, the rung's, its name and its init source."""
    layer = {**flags, **step.fields, "name": f"{prefix}.{step.name}"}
    if step.init_layers is not None:
        layer.update(init_from=previous, init_layers=step.init_layers)
    return layer


def parent_run(tracking: str, experiment: str, ladder: str) -> Tracker:
    """The ladder's parent MLflow run, open: found by its tag (and reopened) when the ladder is rerun, else created."""
    import mlflow

    tracker = Tracker(True, tracking, experiment)
    try:
        client = mlflow.MlflowClient(tracking_uri=tracking)
        exp = client.get_experiment_by_name(experiment)
        found = [] if exp is None else client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{LADDER_TAG}` = '{ladder}'", max_results=1)
    except Exception as e:  # the store cannot be read: no ladder can be tracked
        raise JobError(f"cannot reach the MLflow tracking store: {type(e).__name__}: {e}") from None
    tracker.start(found[0].info.run_id if found else None, ladder, {}, {LADDER_TAG: ladder})
    if tracker.run_id is None:
        raise JobError(f"cannot open the ladder's MLflow run {ladder!r}")
    return tracker


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or finish) the ladder; one ``error:`` line and a non-zero exit when a rung cannot run."""
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("ladder", choices=["paper"], help="paper: A-256 -> X-256 -> X-384 -> X-[256,512] (A, A-LRN: "
                        "X-256 -> X-384 -> X-[256,512])")
    parser.add_argument("--arch", choices=ARCHS, default="E",
                        help="the configuration at the top of the ladder (default: E)")
    ns, rest = parser.parse_known_args(argv)
    flags = vars(build_parser(f"{PROG} {ns.ladder}").parse_args(rest))
    given = [name for name in LADDER_SETS if name in flags]
    if given:
        parser.error(f"{'/'.join('--' + n.replace('_', '-') for n in given)} of trainer.run do not apply: the ladder "
                     "sets each rung's net, scale, LR and init")
    prefix = flags.pop("name", None) or f"{ns.ladder}-{ns.arch}"
    parent = None
    try:
        base = compose({}, flags)
        tracking = tracking_uri(base)
        parent = parent_run(tracking, base.run.experiment, prefix)
        previous = None
        for step in paper_ladder(ns.arch, base.model.crop):
            print(f"== {prefix}: {step.name}" + (f" from {previous}" if previous else ""), flush=True)
            try:
                cfg, state, tracking = train(compose({}, rung_flags(flags, prefix, step, previous)),
                                             parent_run_id=parent.run_id)
            except (JobError, ValueError) as e:
                raise JobError(f"rung {step.name}: {e}") from None
            print(summary(cfg, state, tracking), flush=True)
            previous = state.best_checkpoint
    except (JobError, ValueError) as e:
        reason = " ".join(str(e).split())
        if parent is not None:
            parent.end("FAILED", reason)
        print(f"error: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in a rung: that rung's run is KILLED already, the ladder's too
        if parent is not None:
            parent.end("KILLED", "interrupted (KeyboardInterrupt)")
        raise
    except Exception as e:  # a bug: the traceback follows, the parent run says what it was
        if parent is not None:
            parent.end("FAILED", f"{type(e).__name__}: {' '.join(str(e).split())[:400]}")
        raise
    parent.end("FINISHED")
    print(f"ladder {prefix} complete: final model {previous}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
