"""Forget-Me-Not task inference: segmentation of synthetic and real Atari streams, the Polya score against
the Dirichlet-multinomial marginal likelihood, revisits, frozen inference, resume, bad input, long runs."""

import math

import numpy as np
import pytest

from agent.task_inference import ForgetMeNot


def pattern(seed: int, shape=(84, 84)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape)


def noisy(base: np.ndarray, count: int, rng: np.random.Generator, noise: int = 12) -> np.ndarray:
    """`count` frames of a fixed pattern with independent pixel noise in [-noise, noise]."""
    return np.clip(base + rng.integers(-noise, noise + 1, size=(count, *base.shape)), 0, 255).astype(np.uint8)


def decide_all(fmn: ForgetMeNot, frames) -> list[int]:
    """Feed frames one by one; the decisions, one per window."""
    return [d for d in (fmn.observe(frame) for frame in frames) if d is not None]


def change_points(decisions: list[int]) -> list[int]:
    return [i for i in range(1, len(decisions)) if decisions[i] != decisions[i - 1]]


def test_synthetic_sources_are_segmented_revisits_recognised_and_new_sources_create_contexts():
    rng = np.random.default_rng(0)
    sources = {name: pattern(seed) for seed, name in enumerate("ABC")}
    order = "ABACB"  # 400 frames (100 windows) each
    fmn = ForgetMeNot()
    decisions = decide_all(fmn, np.concatenate([noisy(sources[name], 400, rng) for name in order]))
    assert decisions == [0] * 100 + [1] * 100 + [0] * 100 + [2] * 100 + [1] * 100
    assert fmn.num_contexts == 3
    assert fmn.context == 1
    # Frozen inference names every source's context and changes nothing.
    before = fmn.state_dict()
    for name, expected in zip("ABC", (0, 1, 2)):
        assert fmn.infer(noisy(sources[name], 4, rng)) == expected
    assert np.array_equal(fmn.counts, before["counts"]) and fmn.windows_decided == before["windows_decided"]


def test_switches_inside_windows_are_found_within_two_windows():
    rng = np.random.default_rng(1)
    a, b = pattern(10), pattern(11)
    # Switches at frames 402 and 801: window 100 is half A, half B; window 200 is one B and three A.
    fmn = ForgetMeNot()
    decisions = decide_all(fmn, np.concatenate([noisy(a, 402, rng), noisy(b, 399, rng), noisy(a, 401, rng)]))
    assert len(decisions) == 300
    assert decisions[:100] == [0] * 100 and decisions[201:] == [0] * 99
    assert decisions[101] != 0 and decisions[101:200] == [decisions[101]] * 99
    assert set(change_points(decisions)) <= {100, 101, 200, 201}
    # A window half A and half B fits neither model well: the uniform model may win it and start a context
    # that the sources never come back to. Only a straddling window can do that.
    assert fmn.num_contexts <= 3


def test_polya_score_is_the_dirichlet_multinomial_marginal_likelihood():
    rng = np.random.default_rng(2)
    size, levels, alpha = 3, 4, 0.7
    fmn = ForgetMeNot(levels=levels, window=3, size=size, alpha=alpha, max_count=10**6)
    decide_all(fmn, rng.integers(0, 256, size=(30, size, size), dtype=np.uint8))
    frames = rng.integers(0, 256, size=(5, size, size), dtype=np.uint8)
    got = fmn.log_likelihoods(frames)
    quantized = frames.astype(np.int64).reshape(5, -1) * levels // 256
    for k, counts in enumerate(fmn.counts):
        expected = 0.0
        for p in range(size * size):  # log B(n + m + alpha) - log B(n + alpha), per pixel
            n, m = counts[p], np.bincount(quantized[:, p], minlength=levels)
            expected += (math.lgamma(n.sum() + levels * alpha) - math.lgamma(n.sum() + m.sum() + levels * alpha)
                         + sum(math.lgamma(n[v] + m[v] + alpha) - math.lgamma(n[v] + alpha) for v in range(levels)))
        assert got[k] == pytest.approx(expected, rel=1e-12, abs=1e-9)


def test_preprocessing_pools_and_quantises():
    fmn = ForgetMeNot(levels=8, size=2)
    frame = np.array([[0, 255, 100, 100], [255, 0, 100, 100], [31, 32, 255, 255], [32, 33, 255, 254]], np.uint8)
    # Means 127.5, 100, 32, 254.75 -> levels 3, 3, 1, 7. Already 2x2: 255 -> 7, 31 -> 0.
    assert fmn._quantize(frame[None]).tolist() == [[3, 3, 1, 7]]
    assert fmn._quantize(np.array([[[255, 31], [32, 0]]], np.uint8)).tolist() == [[7, 0, 1, 0]]


def atari_frames(game: str, count: int, seed: int) -> np.ndarray:
    """`count` observations of `game` as training sees them (the newest frame of each stack), random actions."""
    from envs import NUM_ACTIONS, make_vector_env

    env = make_vector_env(game, 1, num_threads=1)
    try:
        rng = np.random.default_rng(seed)
        frames = [env.reset(seed=seed)[0, -1]]
        while len(frames) < count:
            frames.append(env.step(rng.integers(0, NUM_ACTIONS, size=1)).obs[0, -1])
        return np.stack(frames)
    finally:
        env.close()


def test_real_atari_stream_pong_breakout_pong():
    pong, breakout = atari_frames("Pong", 600, seed=3), atari_frames("Breakout", 300, seed=4)
    fmn = ForgetMeNot()
    decisions = decide_all(fmn, np.concatenate([pong[:300], breakout, pong[300:]]))
    assert decisions == [0] * 75 + [1] * 75 + [0] * 75
    assert fmn.num_contexts == 2
    assert fmn.infer(pong[-8:]) == 0 and fmn.infer(breakout[-8:]) == 1


def test_state_dict_resumes_bit_for_bit():
    rng = np.random.default_rng(5)
    stream = np.concatenate([noisy(pattern(seed), 203, rng) for seed in (20, 21, 20, 22)])
    uninterrupted = ForgetMeNot(max_count=100)
    expected = [uninterrupted.observe(frame) for frame in stream]
    half = len(stream) // 2 + 1  # mid-window
    first = ForgetMeNot(max_count=100)
    got = [first.observe(frame) for frame in stream[:half]]
    state = first.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float, type(None), dict)) for v in state.values())
    resumed = ForgetMeNot(max_count=100)
    resumed.load_state_dict(state)
    got += [resumed.observe(frame) for frame in stream[half:]]
    assert got == expected
    final, reference = resumed.state_dict(), uninterrupted.state_dict()
    assert final.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == final[key].dtype and np.array_equal(value, final[key]), key
        else:
            assert value == final[key], key
    with pytest.raises(ValueError, match="built with"):
        ForgetMeNot(levels=4).load_state_dict(state)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="levels"):
        ForgetMeNot(levels=1)
    with pytest.raises(ValueError, match="window"):
        ForgetMeNot(window=0)
    with pytest.raises(ValueError, match="switch_prior"):
        ForgetMeNot(switch_prior=0.0)
    fmn = ForgetMeNot()
    with pytest.raises(ValueError, match="No context"):
        fmn.infer(np.zeros((4, 84, 84), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(80, 80\)"):
        fmn.observe(np.zeros((80, 80), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        fmn.observe(np.zeros((84, 84), np.float32))
    assert fmn.frames_observed == 0  # a rejected frame is not counted


def test_max_contexts_sends_new_sources_to_the_best_existing_context():
    rng = np.random.default_rng(6)
    fmn = ForgetMeNot(max_contexts=2)
    decisions = decide_all(fmn, np.concatenate([noisy(pattern(seed), 200, rng) for seed in (30, 31, 32)]))
    assert fmn.num_contexts == 2 and set(decisions[100:]) <= {0, 1}
    assert np.isfinite(fmn.log_posterior).all()


def test_margin_keeps_a_source_in_its_context():
    rng = np.random.default_rng(7)
    frames = np.concatenate([noisy(pattern(40), 200, rng), noisy(pattern(41), 200, rng)])
    guarded = ForgetMeNot(new_context_margin=1e9)
    assert set(decide_all(guarded, frames)) == {0} and guarded.num_contexts == 1


def test_long_run_stays_finite_and_keeps_hearing_switches():
    """50,000 windows (8x8 frames to keep it cheap), two sources alternating every 5,000 windows."""
    rng = np.random.default_rng(8)
    window, size, block = 4, 8, 5000
    sources = [noisy(pattern(seed, (size, size)), 64, rng, noise=8) for seed in (50, 51)]
    fmn = ForgetMeNot(window=window, size=size)
    decisions = []
    for w in range(10 * block):
        frames = sources[(w // block) % 2]
        for j in range(window):
            decision = fmn.observe(frames[(w * window + j) % len(frames)])
        decisions.append(decision)
    assert decisions == [(w // block) % 2 for w in range(10 * block)]
    assert fmn.windows_decided == 10 * block and fmn.frames_observed == 10 * block * window
    assert fmn.windows_since_switch == block - 1
    assert np.isfinite(fmn.log_posterior).all() and fmn.log_posterior.max() == pytest.approx(0.0)
    assert fmn.counts.max() <= fmn.max_count and (fmn._totals == fmn.max_count).all()  # decayed, not halved
    # Full-run magnitudes: after 2^40 windows in one context the switch prior is ~1e-13, and a switch still wins.
    fmn.windows_since_switch = 2**40
    assert decide_all(fmn, sources[0][:window]) == [0]


# ------------------------------------------------------------------ the paper's held-out model, persistence


def polya_marginal(levels_seen: np.ndarray, counts: np.ndarray, alpha: float, levels: int) -> float:
    """log of the closed-form Dirichlet-multinomial marginal of a sequence at every pixel, given prior counts:
    prod over pixels of Gamma(N + L a) / Gamma(N + T + L a) * prod over levels of Gamma(n + c + a) / Gamma(n + a)."""
    total = 0.0
    for p in range(levels_seen.shape[1]):
        c = np.bincount(levels_seen[:, p], minlength=levels)
        n = counts[p]
        total += math.lgamma(n.sum() + levels * alpha) - math.lgamma(n.sum() + len(levels_seen) + levels * alpha)
        total += sum(math.lgamma(n[x] + c[x] + alpha) - math.lgamma(n[x] + alpha) for x in range(levels))
    return total


def test_the_held_out_model_is_a_fresh_dirichlet_scored_by_the_polya_marginal():
    """The held-out score of a window is the closed-form marginal of a Dirichlet with no counts, the window's
    earlier frames included (not levels^-1 per pixel-frame: that is only its first frame's score)."""
    rng = np.random.default_rng(11)
    fmn = ForgetMeNot(levels=4, window=4, size=3, alpha=0.5)
    frames = rng.integers(0, 256, size=(4, 3, 3)).astype(np.uint8)
    frames[2] = frames[0]  # a repeated frame: the earlier frames matter
    quantised = frames.reshape(4, 9).astype(np.int64) * 4 // 256
    expected = polya_marginal(quantised, np.zeros((9, 4)), 0.5, 4)
    assert fmn.held_out_log_likelihood(frames) == pytest.approx(expected, abs=1e-9)
    static = np.repeat(frames[:1], 4, axis=0)  # a still screen: the Dirichlet learns it within the window
    assert fmn.held_out_log_likelihood(static) > 4 * 9 * math.log(1 / 4) > fmn.held_out_log_likelihood(frames)
    for frame in frames:  # the window becomes context 0; a context scores with its counts the same way
        fmn.observe(frame)
    later = rng.integers(0, 256, size=(3, 3, 3)).astype(np.uint8)
    counts = fmn.counts[0]
    assert fmn.log_likelihoods(later)[0] == pytest.approx(
        polya_marginal(later.reshape(3, 9).astype(np.int64) * 4 // 256, counts, 0.5, 4), abs=1e-9)


def test_a_flash_does_not_capture_a_later_unrelated_game():
    """Two windows of odd frames inside a long source: without persistence they start a context (and two
    switches, there and back); with persist=3 the flash makes no context and no switch, and a later, unrelated
    source gets the next context, its own."""
    rng = np.random.default_rng(12)
    base, flash, other = noisy(pattern(60), 400, rng), noisy(pattern(61), 8, rng), noisy(pattern(62), 200, rng)
    stream = np.concatenate([base[:200], flash, base[200:], other])
    eager = ForgetMeNot(persist=1)
    decisions = decide_all(eager, stream)
    assert eager.num_contexts == 3 and decisions[50] == 1 and change_points(decisions)[:2] == [50, 52]
    steady = ForgetMeNot(persist=3)
    decisions = decide_all(steady, stream)
    assert decisions[:102] == [0] * 102  # through the flash and back
    assert steady.num_contexts == 2 and set(decisions[-40:]) == {1}
    assert change_points(decisions) == [102 + 2]  # the new source, decided on its third window


def test_persistence_resumes_bit_for_bit_with_a_change_pending():
    rng = np.random.default_rng(13)
    stream = np.concatenate([noisy(pattern(seed), 101, rng) for seed in (70, 71, 70)])
    uninterrupted = ForgetMeNot(persist=4)
    expected = [uninterrupted.observe(frame) for frame in stream]
    first = ForgetMeNot(persist=4)
    got = [first.observe(frame) for frame in stream[:109]]  # two windows into the second source: pending
    assert first._pending_target is not None and first.context == 0
    resumed = ForgetMeNot(persist=4)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.observe(frame) for frame in stream[109:]]
    assert got == expected
    final, reference = resumed.state_dict(), uninterrupted.state_dict()
    for key, value in reference.items():
        assert np.array_equal(final[key], value) if isinstance(value, np.ndarray) else final[key] == value, key


def test_a_checkpoint_of_the_earlier_model_is_refused_with_a_clear_message():
    fmn = ForgetMeNot()
    state = fmn.state_dict()
    state["config"] = {k: v for k, v in state["config"].items() if k not in ("model", "evidence_scale", "persist")}
    with pytest.raises(ValueError, match="earlier Forget-Me-Not .* Resume it with the version of the code"):
        ForgetMeNot().load_state_dict(state)


@pytest.mark.parametrize("recording", ["fmn_cora", "fmn_second"])
def test_recorded_random_play_of_twelve_games(recording):
    """Random play recorded once (scripts/fmn_frames.py record: 1,000 frames a visit, each game twice) with the
    config's defaults: every switch detected, every revisit recognised, at most 2 spurious changes in any visit.
    CORA's SpaceInvaders and StarGunner share their main context (their pooled frames are mostly the same gray
    levels: docs/full-agent.md); no other pair may."""
    from scripts_helper import fmn_frames
    from test_train import ROOT

    from agent.config import FMNConfig

    data = np.load(ROOT / "tests" / "data" / f"{recording}.npz")
    summary = fmn_frames.measure(data["frames"], [str(g) for g in data["games"]], FMNConfig())
    assert summary["detected"] == summary["switches"] == 11
    assert all(summary["revisits_recognised"].values()) and len(summary["revisits_recognised"]) == 6
    assert summary["max_spurious_changes_in_a_visit"] <= 2
    if recording == "fmn_cora":
        assert summary["merged_games"] == [["SpaceInvaders", "StarGunner"]] and summary["nmi"] >= 0.85
    else:
        assert summary["merged_games"] == [] and summary["nmi"] >= 0.9 and summary["contexts_created"] == 6


def test_every_env_observed_detects_a_switch_in_fewer_vector_steps_with_the_same_memory():
    """fmn.envs: all feeds every env's newest frame, in env order, and counts max_count in vector steps (frames x
    envs); first feeds env 0's only. Each env shows its own noisy view of the source."""
    from agent.config import FMNConfig
    from agent.tasks import build_fmn, feed

    rng = np.random.default_rng(3)
    envs, steps = 8, 200
    a, b = pattern(20), pattern(21)
    stream = np.concatenate([noisy(a, steps * envs, rng), noisy(b, steps * envs, rng)]).reshape(2 * steps, envs, 84, 84)
    delays = {}
    for mode in ("first", "all"):
        settings = FMNConfig(envs=mode, max_count=50)
        fmn = build_fmn(settings, envs)
        assert fmn.max_count == 50 * (envs if mode == "all" else 1)
        decided = [feed(fmn, frames, mode == "all") for frames in stream]
        assert fmn.frames_observed == 2 * steps * (envs if mode == "all" else 1)
        assert fmn.num_contexts == 2
        delays[mode] = next(t for t in range(steps, 2 * steps) if decided[t] == 1) - steps
        assert all(d in (None, 0) for d in decided[:steps])
        assert all(d in (None, 1) for d in decided[steps + delays[mode]:])
    # persist (5) windows of 4 frames: 20 vector steps with env 0 alone, 20 / 8 rounded up with all 8 envs.
    assert delays["first"] == 19 and delays["all"] == 2


def test_the_frames_of_every_env_are_fed_in_env_order():
    from agent.tasks import feed

    class Spy:
        def __init__(self):
            self.seen = []

        def observe(self, frame):
            self.seen.append(int(frame[0, 0]))
            return len(self.seen) if len(self.seen) % 3 == 0 else None  # a window of 3 frames

    frames = np.arange(7, dtype=np.uint8)[:, None, None] * np.ones((1, 84, 84), dtype=np.uint8)
    spy = Spy()
    assert feed(spy, frames, every_env=True) == 6 and spy.seen == [0, 1, 2, 3, 4, 5, 6]  # the last of 2 decisions
    assert feed(spy, frames, every_env=False) is None and spy.seen[-1] == 0 and len(spy.seen) == 8
    assert feed(spy, frames, every_env=False) == 9 and len(spy.seen) == 9
