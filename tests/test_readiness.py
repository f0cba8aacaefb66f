import numpy as np
import pytest

from sftrl_callbacks.readiness import (
    Candidate,
    detect_gap_widening,
    detect_loss_turn,
    detect_passk_decline,
    readiness_scores,
)


def u_curve(minimum_at=500, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    steps = list(range(50, 1501, 50))
    values = [0.3 + ((s - minimum_at) / 1000) ** 2 + rng.normal(0, noise) for s in steps]
    return list(zip(steps, values))


def test_loss_turn_found_near_the_minimum_despite_noise():
    for seed in range(5):
        flag = detect_loss_turn(u_curve(seed=seed), smoothing=0.3, patience=3, min_delta=0.01)
        assert flag is not None and abs(flag.began_step - 500) <= 150
        assert flag.confirmed_step > flag.began_step


def test_no_turn_on_a_falling_or_flat_noisy_loss():
    steps = range(50, 1501, 50)
    falling = [(s, 1.0 / (1 + s / 100)) for s in steps]
    assert detect_loss_turn(falling) is None
    rng = np.random.default_rng(0)
    flat = [(s, 0.3 + rng.normal(0, 0.001)) for s in steps]
    assert detect_loss_turn(flat, min_delta=0.01) is None


def test_passk_decline_needs_pass1_rising():
    steps = [100, 200, 300, 400, 500]
    passk = list(zip(steps, [0.6, 0.8, 0.75, 0.7, 0.65]))
    rising = list(zip(steps, [0.1, 0.2, 0.3, 0.35, 0.4]))
    falling = list(zip(steps, [0.1, 0.2, 0.15, 0.1, 0.05]))
    flag = detect_passk_decline(passk, rising, patience=2, min_delta=0.02)
    assert flag is not None and flag.began_step == 200 and flag.confirmed_step == 400
    assert detect_passk_decline(passk, falling) is None


def test_gap_widening():
    gap = [(s, g) for s, g in zip(range(100, 801, 100), [-0.5, -0.2, 0.0, 0.01, 0.05, 0.09, 0.14, 0.2])]
    flag = detect_gap_widening(gap, patience=3, min_delta=0.02)
    assert flag is not None and flag.began_step == 400 and flag.confirmed_step == 700
    assert detect_gap_widening([(s, -1.0 + s / 1000) for s in range(100, 900, 100)]) is None  # negative gap
    assert detect_gap_widening([(1, 0.1), (2, 0.09), (3, 0.1)], patience=3) is None


def test_readiness_score_formula():
    cands = [Candidate(1, loss=1.0, passk=0.5), Candidate(2, loss=0.5, passk=0.7), Candidate(3, loss=0.6, passk=0.9)]
    scores = readiness_scores(cands, loss_weight=0.5, passk_weight=0.5)
    assert scores[1] == pytest.approx(0.0)
    assert scores[2] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert scores[3] == pytest.approx(0.5 * 0.8 + 0.5 * 1.0)
    only_loss = readiness_scores([Candidate(1, loss=1.0), Candidate(2, loss=0.5)])
    assert only_loss == {1: 0.0, 2: 1.0}
    assert readiness_scores(cands, loss_weight=1.0, passk_weight=0.0)[2] == pytest.approx(1.0)


def test_stop_patience_counts_measurement_steps_not_emissions():
    from sftrl_callbacks import RLReadinessConfig
    from sftrl_callbacks.readiness import ReadinessTracker
    from sftrl_callbacks.records import LossRecord, PassAtKRecord

    tracker = ReadinessTracker(RLReadinessConfig(early_stopping="loss", stop_patience=1))
    losses = [1.0, 0.8, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    stop_steps = []
    for i, loss in enumerate(losses):
        step = 10 * (i + 1)
        # Both callbacks report on the same (save) step, as they do in training.
        tracker.add(LossRecord(step, "h", loss, None, None, None))
        tracker.add(PassAtKRecord(step, "p", {1: 0.1, 8: 0.5}))
        if tracker.pending_stop and not stop_steps:
            stop_steps.append(step)
    turn = next(f for f in tracker.flags if f.kind == "loss_turn")
    assert stop_steps == [turn.confirmed_step + 10]  # one more measurement step, not one more emission
