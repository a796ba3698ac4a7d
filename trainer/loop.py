"""The training loop one Ray Train worker runs (Sec. 3.1): train step, validation, schedule, checkpoint, report.

Reads top to bottom: ``train_loop`` sets up model, optimiser and data from the config (or the latest checkpoint),
then runs epochs of ``train_epoch`` + ``validate`` until the schedule says stop. Ray Train runs one copy per worker;
DDP averages gradients, so every replica takes the same step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import ray.train
import ray.train.torch

from pipeline.dataset import TRAIN, VAL, derived_seed, iter_epoch
from pipeline.decode import make_eval_decoder, make_train_decoder
from pipeline.loader import EvalCollate, TrainAugment, TrainCollate
from pipeline.models import MODEL_URI_TAG
from trainer import checkpoint as ckpt
from trainer import console, schedule
from trainer.config import TrainConfig, from_dict
from trainer.distributed import Worker, all_sum, current, spread
from trainer.tracking import INIT_TAG, LATEST_TAG, Tracker
from vgg.card import ModelCard
from vgg.evaluate import dense_posteriors, stack_by_shape
from vgg.model import VGG, build, init_all_but_last, init_from_a


@dataclass(frozen=True)
class JobInfo:
    """What the driver resolved before any worker started (so workers never re-read the manifest)."""

    mean: tuple[float, float, float]
    eigval: tuple[float, float, float]
    eigvec: tuple[tuple[float, float, float], ...]
    wnids: tuple[str, ...]
    steps_per_epoch: int
    run_dir: str  # <storage>/<name>: checkpoint URIs are run_dir/<checkpoint dir name>
    mlflow_run_id: str | None
    tracking_uri: str | None
    step_delay_s: float = 0.0  # test hook (VERYDEEP_STEP_DELAY_S): lets a test kill a worker mid-epoch
    keys_log: str | None = None  # test hook (VERYDEEP_KEYS_LOG): a directory where each rank logs the keys it trains on


def make_model(cfg: TrainConfig, num_classes: int) -> VGG:
    """The net of the config with its random init (seeded, so every replica starts equal even before DDP's sync)."""
    m = cfg.model
    torch.manual_seed(cfg.run.seed)
    return build(m.arch, num_classes, width=m.width, fc_width=m.fc_width, crop=m.crop, dropout=m.dropout,
                 init=m.init, init_std=m.init_std)


def init_from(model: VGG, cfg: TrainConfig, tracking_uri: str | None, classes: Sequence[str] = ()) -> str:
    """Copy trained weights into ``model`` as ``init_layers`` says; returns what was done, for the log. ``classes``:
    the data's class names, which decide with the class count whether the source's FC8 is kept."""
    card, weights = ckpt.load_source(cfg.model.init_from, tracking_uri)  # type: ignore[arg-type]
    how = cfg.model.init_layers_for(card.arch)
    other = bool(card.classes and classes) and tuple(card.classes) != tuple(classes)
    if how == "all" and (card.num_classes != model.num_classes or other):
        # Fine-tuning on another dataset: every layer but the classifier's last, which starts afresh.
        source = card.build()
        source.load_state_dict(weights)
        init_all_but_last(model, source)
        theirs = f"{card.num_classes} other classes" if card.num_classes == model.num_classes else card.num_classes
        return (f"all weights but FC8 from VGG-{card.arch} ({cfg.model.init_from}); FC8 re-initialised for "
                f"{model.num_classes} classes (the source has {theirs})")
    if how == "all":
        model.load_state_dict(weights)
    else:
        source = card.build()
        source.load_state_dict(weights)
        init_from_a(model, source)
    return f"{how} weights from VGG-{card.arch} ({cfg.model.init_from})"


def freeze_convs(model: VGG) -> None:
    """The common transfer recipe: only the FC layers learn. Frozen weights get no gradient, so SGD (weight decay and
    momentum included) leaves them exactly as loaded, and DDP does not synchronise them."""
    for p in model.features.parameters():
        p.requires_grad_(False)


def card_for(cfg: TrainConfig, info: JobInfo, extra: dict[str, Any]) -> ModelCard:
    """The model card stored in every checkpoint (what the evaluation sweep needs to rebuild and feed the net)."""
    m, s = cfg.model, cfg.data.train_scale
    return ModelCard(arch=m.arch, num_classes=len(info.wnids), crop=m.crop, smin=s.smin, smax=s.smax,
                     mean=info.mean, width=m.width, fc_width=m.fc_width, classes=info.wnids, flip=cfg.data.flip,
                     info=extra)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """How many rows have their label among the top k scores, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [float(hits[:, :k].any(dim=1).sum()) for k in ks]


def autocast(worker: Worker) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs (the H100's tensor cores); plain fp32 on CPUs. A GPU run records it among its
    deviations from the paper (``TrainConfig.deviations_from_paper``)."""
    if worker.cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def validate(model: VGG, shard: Any, cfg: TrainConfig, info: JobInfo, worker: Worker) -> dict[str, float]:
    """Dense single-scale evaluation at Q (Sec. 3.2), optionally flip-averaged, as the sweep's dense rows compute it
    (``vgg.evaluate``); each val image counts once overall."""
    decoder = make_eval_decoder(cfg.data.decoder, mean=info.mean, device=worker.device)
    collate = EvalCollate(decoder, cfg.data.q)
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # top-1 hits, top-5 hits, images, loss sum
    with torch.no_grad(), autocast(worker):
        for images, labels in iter_epoch(shard, batch_size=32, epoch=0, seed=0, rank=worker.rank,
                                         collate_fn=collate):
            labels = labels.to(worker.device)
            # Images differ in size (shorter side Q, any aspect): batch only equal shapes, never pad.
            probs = torch.empty(len(images), len(info.wnids), device=worker.device)
            for idx, x in stack_by_shape(images):
                probs[idx] = dense_posteriors(model, x, flip=cfg.data.val_flip)
            top1, top5 = topk_correct(probs, labels)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
            sums = [a + b for a, b in zip(sums, (top1, top5, float(len(labels)), loss))]
    top1, top5, n, loss = all_sum(sums, worker)
    if n == 0:
        raise RuntimeError("the validation split delivered no images")
    return {"val_top1": top1 / n, "val_top5": top5 / n, "val_top1_err": 1 - top1 / n, "val_top5_err": 1 - top5 / n,
            "val_loss": loss / n, "val_images": n}


KEEP_SCORE = "keep_score"


def keep_score(val_top1: float, step: int) -> float:
    """The score Ray Train keeps the best checkpoints by: validation top-1, ties going to the earlier checkpoint.

    The run's best model is the first checkpoint to reach the best top-1 (later equal ones do not replace it), so an
    equal later score must rank below it, or retention could delete the checkpoint the run points to. The tie-break
    (1e-12 per step) stays below one image of a 50,000-image validation set for any run under 2e7 steps.
    """
    return val_top1 - 1e-12 * step


def save(model: VGG, optimizer: torch.optim.Optimizer, state: ckpt.TrainState, cfg: TrainConfig, info: JobInfo,
         metrics: dict[str, float], worker: Worker, tracker: Tracker) -> str:
    """Report ``metrics`` with a checkpoint of everything a resume needs; returns the checkpoint's URI."""
    name = f"checkpoint_e{state.epoch:03d}_s{state.step:08d}"
    uri = f"{info.run_dir}/{name}"
    metrics = {**metrics, KEEP_SCORE: keep_score(metrics.get("val_top1", 0.0), state.step)}
    if not worker.is_main:  # every worker reports (it is a barrier); rank 0 alone writes the files
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return uri
    with tempfile.TemporaryDirectory(prefix="verydeep-ckpt-") as tmp:
        card = card_for(cfg, info, {"epoch": state.epoch, "step": state.step, "mlflow_run_id": info.mlflow_run_id,
                                    **{k: v for k, v in metrics.items() if k.startswith("val_")}})
        ckpt.write(tmp, model, optimizer, card, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
    tracker.tag(LATEST_TAG, uri)
    return uri


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: everything from model set-up to the last epoch's report."""
    cfg: TrainConfig = from_dict(loop_config["config"])
    info = JobInfo(**loop_config["info"])
    worker = current()
    # Ray Train sets a worker's root logger to INFO; the loop prints its own lines, and one of Ray Train's INFO
    # records (each report, with every metric) is logged under a name its LoggingConfig does not reach.
    logging.getLogger().setLevel(logging.WARNING)
    tracker = Tracker(worker.is_main and info.mlflow_run_id is not None, info.tracking_uri, cfg.run.experiment)
    tracker.attach(info.mlflow_run_id)  # the driver's open run; the driver closes it

    model = make_model(cfg, len(info.wnids))
    optim = cfg.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=optim.effective_lr, momentum=optim.momentum,
                                weight_decay=optim.weight_decay)
    # The latest complete checkpoint in storage, not Ray Train's latest registered one (ray.train.get_checkpoint()):
    # a worker killed after writing a checkpoint but before Ray Train registered it leaves the two apart, and the
    # training split's epoch order starts from the one in storage (trainer.run.SplitSource), so the model must too.
    restored = ckpt.latest_in(info.run_dir)
    if restored is not None:
        with tempfile.TemporaryDirectory(prefix="verydeep-resume-") as tmp:
            directory = ckpt.fetch_checkpoint(restored[0], tmp)
            state = ckpt.read_state(directory)
            model.load_state_dict(ckpt.read_weights(directory))
            saved = ckpt.read_optimizer(directory)
            if saved is not None:
                optimizer.load_state_dict(saved)
        if worker.is_main:
            print(f"resumed at epoch {state.epoch} step {state.step} (+{state.step_in_epoch} into the epoch)",
                  flush=True)
    else:
        state = ckpt.TrainState(schedule=schedule.start(optim.effective_lr).to_dict(),
                                config=loop_config["config"], mlflow_run_id=info.mlflow_run_id)
        if cfg.model.init_from is not None:
            done = init_from(model, cfg, info.tracking_uri, info.wnids)
            if worker.is_main:
                print(f"initialised {done}", flush=True)
                tracker.tag(INIT_TAG, done)
    if cfg.model.freeze_convs:
        freeze_convs(model)

    if worker.cuda:
        model = model.to(memory_format=torch.channels_last)
    ddp = ray.train.torch.prepare_model(model)  # moves to the device; DDP when world size > 1
    net: VGG = ddp.module if hasattr(ddp, "module") else ddp

    decoder = make_train_decoder(cfg.data.decoder, crop=cfg.model.crop, mean=info.mean, eigval=info.eigval,
                                 eigvec=info.eigvec, device=worker.device, batch_size=cfg.micro_batch)
    s = cfg.data.train_scale
    augment = TrainAugment(s.smin, s.smax, cfg.model.crop, flip=cfg.data.flip, pca_std=cfg.data.colour_shift)
    train_shard, val_shard = ray.train.get_dataset_shard(TRAIN), ray.train.get_dataset_shard(VAL)
    sched = schedule.extend(schedule.ScheduleState.from_dict(state.schedule), cfg.schedule)
    warmup_steps = optim.warmup_steps(info.steps_per_epoch)
    log_every = max(1, info.steps_per_epoch // 10)
    clock = console.EpochClock(info.steps_per_epoch, cfg.schedule.epochs)

    while not sched.stopped:
        epoch = state.epoch
        collate = TrainCollate(decoder, augment, seed=cfg.run.seed, epoch=epoch)
        batches = iter_epoch(train_shard, batch_size=cfg.per_worker_batch, epoch=epoch, seed=cfg.run.seed,
                             rank=worker.rank, collate_fn=collate, shuffle_buffer=cfg.data.shuffle_buffer,
                             drop_last=True)
        ddp.train()
        window = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "n": 0.0, "wait": 0.0, "time": 0.0}
        skip, t_last, lr = state.step_in_epoch, time.perf_counter(), sched.lr
        clock.start_epoch()
        for i, (images, labels, keys) in enumerate(batches):
            if i < skip:  # resuming mid-epoch: these batches were consumed before the checkpoint
                t_last = time.perf_counter()
                clock.start_epoch()
                continue
            if info.keys_log:
                log_keys(info.keys_log, worker.rank, epoch, state.step + 1, keys)
            t_data = time.perf_counter()
            # Dropout masks from (seed, step, rank): a run resumed at any step draws what an uninterrupted one drew.
            torch.manual_seed(derived_seed(cfg.run.seed, "dropout", state.step, worker.rank))
            if info.step_delay_s:
                time.sleep(info.step_delay_s)
            lr = schedule.lr_at(state.step, sched.lr, warmup_steps, optim.lr) if sched.decays == 0 else sched.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, top1, top5 = train_step(ddp, optimizer, images, labels, cfg, worker)
            state.step += 1
            state.step_in_epoch += 1
            clock.step_done()
            t_now = time.perf_counter()
            for k, v in (("loss", loss_sum), ("top1", top1), ("top5", top5), ("n", float(len(labels))),
                         ("wait", t_data - t_last), ("time", t_now - t_last)):
                window[k] += v
            t_last = t_now
            if state.step_in_epoch % log_every == 0 or state.step_in_epoch == info.steps_per_epoch:
                loss_sum, top1, top5, n = all_sum([window["loss"], window["top1"], window["top5"], window["n"]],
                                                  worker)
                logged = window_metrics(loss_sum, top1, top5, n, lr, window["wait"], window["time"])
                tracker.metrics(logged, step=state.step)
                if worker.is_main and clock.line_due():
                    print(console.progress_line(epoch, cfg.schedule.epochs, state.step_in_epoch,
                                                info.steps_per_epoch, logged,
                                                *clock.etas(epoch, state.step_in_epoch)), flush=True)
                window = dict.fromkeys(window, 0.0)
            every = cfg.run.checkpoint_every_steps
            if every and state.step % every == 0 and state.step_in_epoch < info.steps_per_epoch:
                metrics = {"epoch": epoch, "step": state.step, "val_top1": state.best_val_top1 or 0.0}
                save(net, optimizer, state, cfg, info, metrics, worker, tracker)

        val = validate(net, val_shard, cfg, info, worker)
        # DDP keeps replicas equal by construction; a checksum spread > 0 would mean a broken collective.
        checksum = sum(float(p.detach().double().sum()) for p in net.parameters())
        val["replica_divergence"] = spread(checksum, worker)
        sched, decision = schedule.step(sched, val["val_top1"], cfg.schedule)
        state.epoch, state.step_in_epoch, state.schedule = epoch + 1, 0, sched.to_dict()
        state.history.append({"epoch": epoch + 1, "step": state.step, "lr": lr, **val})
        improved = state.best_val_top1 is None or val["val_top1"] > state.best_val_top1
        name_uri = f"{info.run_dir}/checkpoint_e{state.epoch:03d}_s{state.step:08d}"
        if improved:
            state.best_val_top1, state.best_checkpoint = val["val_top1"], name_uri
        metrics = {"epoch": state.epoch, "step": state.step, "decision": decision.value, "next_lr": sched.lr, **val}
        # The epoch's wall time ends here, with validation; its rate is of training alone, over all workers.
        epoch_s, rate = clock.end_epoch(), clock.steps * cfg.per_worker_batch * worker.world_size / max(
            clock.train_s, 1e-9)
        logged = {**epoch_metrics(val), "perf/epoch_s": epoch_s}
        tracker.metrics(logged, step=state.step)
        uri = save(net, optimizer, state, cfg, info, metrics, worker, tracker)
        if improved:
            tracker.tag(MODEL_URI_TAG, uri)
        if worker.is_main:
            outcome = (decision.value + (f", lr {sched.lr:g}" if decision is schedule.Decision.DECAY else "")
                       + (f" ({sched.stop_reason})" if sched.stopped else ""))
            print(console.epoch_line(state.epoch, cfg.schedule.epochs, epoch_s, rate, logged, cfg.data.q, outcome),
                  flush=True)
    tracker.release()


def window_metrics(loss_sum: float, top1: float, top5: float, n: float, lr: float, wait_s: float,
                   time_s: float) -> dict[str, float]:
    """MLflow's metrics of one window of training steps (sums over all workers; errors in %, as the paper gives
    them): loss, errors and the LR under ``train/`` (the LR also as log10, where its decays are equal steps),
    throughput and data wait under ``perf/``."""
    return {"train/loss": loss_sum / n, "train/top1_err": 100 * (1 - top1 / n), "train/top5_err": 100 * (1 - top5 / n),
            "train/lr": lr, "train/lr_log10": math.log10(lr),
            "perf/images_per_s": n / time_s, "perf/data_wait_pct": 100 * wait_s / time_s}


def epoch_metrics(val: dict[str, float]) -> dict[str, float]:
    """MLflow's metrics of one epoch's validation (``validate``'s fractions as the paper's %) and the replicas'
    divergence under ``sys/``."""
    return {"val/top1_err": 100 * val["val_top1_err"], "val/top5_err": 100 * val["val_top5_err"],
            "val/loss": val["val_loss"], "val/images": val["val_images"],
            "sys/replica_divergence": val["replica_divergence"]}


def log_keys(directory: str, rank: int, epoch: int, step: int, keys: tuple[str, ...]) -> None:
    """Append the keys of the batch this rank trains step ``step`` on (a test's proof of exactly-once epochs)."""
    with open(f"{directory}/rank{rank}.log", "a") as f:
        f.write(f"{epoch} {step} {' '.join(keys)}\n")


def train_step(ddp: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               cfg: TrainConfig, worker: Worker) -> tuple[float, float, float]:
    """One optimiser step on this worker's batch, in micro-batches with gradients accumulated; returns summed loss
    and top-1/top-5 hits over the batch."""
    images = images.to(worker.device, non_blocking=True)
    labels = labels.to(worker.device, non_blocking=True)
    if worker.cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    n, micro = len(labels), cfg.micro_batch
    chunks = range(0, n, micro)
    loss_sum, hits = 0.0, [0.0, 0.0]
    for j, start in enumerate(chunks):
        x, y = images[start:start + micro], labels[start:start + micro]
        last = j == len(chunks) - 1
        # DDP all-reduces gradients on every backward unless told not to: only the last micro-batch syncs.
        sync = contextlib.nullcontext() if last or not hasattr(ddp, "no_sync") else ddp.no_sync()
        with sync:
            with autocast(worker):
                logits = ddp(x)
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (loss / n).backward()  # the mean over the whole per-worker batch, as one big batch would give
        loss_sum += loss.item()
        hits = [a + b for a, b in zip(hits, topk_correct(logits.detach(), y))]
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"training loss is {loss_sum}: lower --lr or check the data")
    optimizer.step()
    return loss_sum, hits[0], hits[1]

