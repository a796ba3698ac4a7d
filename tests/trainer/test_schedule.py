"""The paper's LR schedule (Sec. 3.1) as decisions on metric histories: plateaus, decays, stops, resume, warm-up."""

import json

import numpy as np
import pytest

from trainer.config import ScheduleConfig
from trainer.schedule import Decision, ScheduleState, extend, lr_at, start, step

KEEP, DECAY, STOP = Decision.KEEP, Decision.DECAY, Decision.STOP


def run(history, cfg, state=None, lr=1e-2):
    """Feed a history until it ends or the schedule stops: (decisions, states after each epoch)."""
    state = start(lr) if state is None else state
    decisions, states = [], []
    for acc in history:
        state, decision = step(state, acc, cfg)
        decisions.append(decision)
        states.append(state)
        if decision is STOP:
            break
    return decisions, states


@pytest.mark.parametrize("patience", [1, 2, 3, 5])
def test_flat_history_decays_after_exactly_patience_epochs(patience):
    decisions, states = run([0.5] * (patience + 1), ScheduleConfig(patience=patience))
    # Epoch 1 sets the best; epochs 2..patience+1 do not improve; the last of them is the plateau.
    assert decisions == [KEEP] * patience + [DECAY]
    assert states[-1].lr == pytest.approx(1e-3) and states[-1].decays == 1 and states[-1].epochs_since_best == 0


def test_improving_history_never_decays():
    cfg = ScheduleConfig(min_delta=1e-3)
    history = [0.1 + 0.002 * i for i in range(cfg.epochs)]
    decisions, states = run(history, cfg)
    assert decisions == [KEEP] * (cfg.epochs - 1) + [STOP]
    assert states[-1].lr == 1e-2 and states[-1].decays == 0 and states[-1].best_epoch == cfg.epochs


@pytest.mark.parametrize("gain, decays", [(0.004, True), (0.01, True), (0.011, False), (0.02, False)])
def test_gains_up_to_min_delta_count_as_plateau(gain, decays):
    decisions, _ = run([0.3, 0.3 + gain], ScheduleConfig(patience=1, min_delta=0.01))
    assert decisions == [KEEP, DECAY if decays else KEEP]


def test_small_gains_do_not_move_the_best():
    # Gains below min_delta neither reset the count nor creep the best upwards.
    _, states = run([0.5, 0.505, 0.509], ScheduleConfig(patience=5, min_delta=0.01))
    assert states[-1].best == 0.5 and states[-1].best_epoch == 1 and states[-1].epochs_since_best == 2


@pytest.mark.parametrize("max_decays", [0, 1, 3])
@pytest.mark.parametrize("patience", [1, 3])
def test_at_most_max_decays_then_stop_on_next_plateau(max_decays, patience):
    cfg = ScheduleConfig(patience=patience, max_decays=max_decays, lr_factor=0.1)
    decisions, states = run([0.5] * 100, cfg)
    decay_epochs = [i + 1 for i, d in enumerate(decisions) if d is DECAY]
    assert decay_epochs == [1 + patience * k for k in range(1, max_decays + 1)]
    assert decisions[-1] is STOP and len(decisions) == 1 + patience * (max_decays + 1)
    final = states[-1]
    assert final.stopped and final.decays == max_decays and "plateau" in final.stop_reason
    assert final.lr == pytest.approx(1e-2 * 0.1**max_decays)


def test_paper_schedule_divides_by_ten_three_times():
    cfg = ScheduleConfig()
    decisions, states = run([0.5] * cfg.epochs, cfg)
    lrs = sorted({s.lr for s in states}, reverse=True)
    assert lrs == pytest.approx([1e-2, 1e-3, 1e-4, 1e-5])
    assert decisions.count(DECAY) == 3 and decisions[-1] is STOP


def test_stops_at_epoch_budget_even_when_a_decay_is_due():
    cfg = ScheduleConfig(epochs=3, patience=2)
    decisions, states = run([0.5, 0.5, 0.5, 0.5], cfg)
    assert decisions == [KEEP, KEEP, STOP]
    assert states[-1].epoch == 3 and states[-1].decays == 0 and "3 epochs" in states[-1].stop_reason


def test_step_after_stop_and_bad_accuracy_raise():
    cfg = ScheduleConfig(epochs=1)
    stopped, decision = step(start(1e-2), 0.5, cfg)
    assert decision is STOP
    with pytest.raises(ValueError, match="already stopped"):
        step(stopped, 0.6, cfg)
    for bad in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="val_top1"):
            step(start(1e-2), bad, ScheduleConfig())
    with pytest.raises(ValueError, match="bad lr"):
        start(0.0)


def test_state_round_trips_through_json():
    _, states = run([0.3, 0.5, 0.5, 0.5, 0.5], ScheduleConfig(patience=2))
    for state in [start(0.04), *states]:
        assert ScheduleState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    with pytest.raises(ValueError, match="unknown|bad schedule state"):
        ScheduleState.from_dict({**states[0].to_dict(), "momentum": 0.9})


def random_history(rng, n):
    """A noisy learning curve: rises, flattens, sometimes dips; accuracies in [0, 1]."""
    trend = 1 - np.exp(-np.arange(n) / rng.uniform(2, 20))
    noise = rng.normal(0, rng.uniform(0, 0.02), n)
    return np.clip(0.7 * trend + noise, 0, 1).round(int(rng.integers(2, 5))).tolist()


def test_restored_state_replays_the_uninterrupted_decisions():
    rng = np.random.default_rng(0)
    for _ in range(300):
        cfg = ScheduleConfig(epochs=int(rng.integers(1, 60)), patience=int(rng.integers(1, 5)),
                             max_decays=int(rng.integers(0, 4)), min_delta=float(rng.choice([0, 1e-3, 1e-2])))
        history = random_history(rng, cfg.epochs)
        decisions, states = run(history, cfg)
        cut = int(rng.integers(0, len(decisions)))  # interrupted after `cut` epochs, resumed from the checkpoint
        restored = ScheduleState.from_dict(json.loads(json.dumps(states[cut - 1].to_dict()))) if cut else start(1e-2)
        resumed, resumed_states = run(history[cut:], cfg, state=restored)
        assert decisions[:cut] + resumed == decisions
        assert resumed_states[-1] == states[-1]
        assert decisions[-1] is STOP and decisions.count(DECAY) <= cfg.max_decays


@pytest.mark.parametrize("start_lr", [0.0, 0.01])
def test_warmup_ramps_linearly_to_the_target(start_lr):
    target, warmup = 0.08, 10
    lrs = [lr_at(i, target, warmup, start_lr) for i in range(warmup + 5)]
    steps = np.diff(lrs[:warmup])
    assert np.allclose(steps, steps[0]) and steps[0] > 0
    assert lrs[0] == pytest.approx(start_lr + (target - start_lr) / warmup)
    assert lrs[warmup - 1] == pytest.approx(target) and all(lr == target for lr in lrs[warmup:])


def test_no_warmup_is_the_lr():
    assert lr_at(0, 0.01) == lr_at(1000, 0.01) == 0.01
    with pytest.raises(ValueError):
        lr_at(-1, 0.01, 5)


def test_extend_reopens_a_budget_stop_only():
    cfg = ScheduleConfig(epochs=2, patience=1, max_decays=0)
    state = start(0.01)
    state, _ = step(state, 0.5, cfg)
    state, decision = step(state, 0.6, cfg)
    assert decision is Decision.STOP and state.stopped
    assert extend(state, cfg) == state  # same budget: still over
    more = ScheduleConfig(epochs=4, patience=1, max_decays=0)
    reopened = extend(state, more)
    assert not reopened.stopped and reopened.epoch == 2 and reopened.best == 0.6
    state, decision = step(reopened, 0.6, more)  # no gain, no decays left: a plateau stop is final
    assert decision is Decision.STOP and state.stop_reason.startswith("plateau")
    assert extend(state, ScheduleConfig(epochs=10, patience=1, max_decays=0)) == state
