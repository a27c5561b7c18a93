"""A run with the shape of configs/cora_atari.yaml past 1M agent steps, made cheap.

Six real games, two cycles, 84k agent steps per visit (1.008M in all): every counter,
seed and file goes through full-run magnitudes (the evaluation seed used to overflow
ale-py's int after 271k steps). Cheap because acting is random (epsilon 1, no forward
pass), the emulator skips no frames (one frame per agent step instead of four), the
learner is thinned to one update per 16k steps, the Fisher uses one minibatch and each
evaluation plays one 300-frame episode. About 3 minutes on 2 cores.
"""

import collections
import csv
from pathlib import Path

import pytest
import torch
from test_train import scalars

from agent.checkpoint import list_checkpoints, load_checkpoint, load_latest
from agent.cli import train_main

ROOT = Path(__file__).resolve().parent.parent
GAMES = ["SpaceInvaders", "Krull", "BeamRider", "Hero", "StarGunner", "MsPacman"]
VISIT, CYCLES, ENVS, CAPACITY = 84_000, 2, 16, 1024
EVAL_EVERY, CHECKPOINT_EVERY, LOG_EVERY = 500_000, 250_000, 10_000
CHEAP = [f"schedule.steps_per_visit={VISIT}", f"schedule.cycles={CYCLES}", f"env.num_envs={ENVS}",
         "env.frame_skip=1", "network.architecture=nature", "torch_threads=1",
         "epsilon.start=1.0", "epsilon.end=1.0", "dqn.learning_starts=512", "dqn.train_every=16384",
         f"replay.capacity_per_game={CAPACITY}", "consolidation.fisher_batches=1", "consolidation.probe_states=16",
         "consolidation.probe_every=250000", f"checkpoint.every={CHECKPOINT_EVERY}", "checkpoint.keep=2",
         f"eval.every={EVAL_EVERY}", "eval.episodes=1", "eval.num_envs=1", "eval.epsilon=1.0",
         "eval.max_episode_frames=300", f"logging.log_every={LOG_EVERY}", "logging.progress_bar=false"]
SLOT_BYTES = 84 * 84 + 1 + 4 + 1 + 1 + 1  # frame, action, reward, done, kind, valid


def crossings(every, total, visit):
    """Steps where a check fires: multiples of `every` crossed within a visit, before its end."""
    steps = set()
    for start in range(0, total, visit):
        for step in range(start + ENVS, start + visit, ENVS):
            if step // every != (step - ENVS) // every:
                steps.add(step)
    return steps


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    run = tmp_path_factory.mktemp("soak") / "run"
    code = train_main(["--config", str(ROOT / "configs" / "cora_atari.yaml"), "--run-dir", str(run), *CHEAP])
    return run, code


def test_the_soak_finishes_with_a_final_evaluation_of_every_game(soak):
    run, code = soak
    assert code == 0
    total = VISIT * len(GAMES) * CYCLES
    assert total > 1_000_000
    with open(run / "eval.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    switches = {VISIT * k for k in range(1, len(GAMES) * CYCLES + 1)}
    expected_steps = {0} | switches | crossings(EVAL_EVERY, total, VISIT)
    assert collections.Counter((int(r["step"]), r["game"]) for r in rows) == {
        (step, game): 1 for step in expected_steps for game in GAMES}
    assert {r["game"] for r in rows if int(r["step"]) == total} == set(GAMES)


def test_every_tensorboard_point_exists_once(soak):
    run, _ = soak
    total = VISIT * len(GAMES) * CYCLES
    tags = scalars(run)
    for tag, points in tags.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{tag} has duplicated steps"
    assert {step for step, _ in tags["charts/sps"]} == {s for s in range(LOG_EVERY, total + 1, LOG_EVERY)}
    assert {step for step, _ in tags["eval/Hero/return"]} == \
        {0} | {VISIT * k for k in range(1, 13)} | crossings(EVAL_EVERY, total, VISIT)
    for game in GAMES:
        # The last game of the second cycle is consolidated too (at the end of the run).
        assert [step for step, _ in tags[f"ewc/{game}/fisher_mean"]] == [
            VISIT * (k + 1) for k in range(len(GAMES) * CYCLES) if GAMES[k % len(GAMES)] == game]
    assert max(value for _, value in tags["charts/updates"]) == pytest.approx(total / 16384, abs=2)


def test_anchors_milestones_and_checkpoint_sizes(soak):
    run, _ = soak
    path, state = load_latest(run / "checkpoints")
    assert state["progress"]["global_step"] == VISIT * len(GAMES) * CYCLES
    assert state["progress"]["game_steps"] == {game: VISIT * CYCLES for game in GAMES}
    assert list(state["consolidator"]["anchors"]) == GAMES
    # Full checkpoints: only the newest `keep`; milestones: one per switch, kept for ever.
    assert len(list_checkpoints(run / "checkpoints")) == 2
    milestones = list_checkpoints(run / "milestones")
    assert [int(p.stem.split("-")[1]) for p in milestones] == [VISIT * k for k in range(1, 13)]

    network_bytes = sum(t.numel() * t.element_size() for t in state["learner"]["online"].values())
    replay_bytes = sum(t.numel() * t.element_size() for game in state["replay"].values() for t in game.values())
    slots = len(GAMES) * CAPACITY // ENVS * ENVS
    per_env = len(GAMES) * ENVS * (8 + 8 + 1)  # cursor, written, open
    assert replay_bytes == slots * SLOT_BYTES + per_env
    # Documented in docs/long-runs.md ("Checkpoints"): replay slots x 7,064 B plus about 8 copies of the network
    # (online, target, Adam's two moments, and two per anchor: its centre and its Fisher), the probe's states,
    # and the plasticity monitor's initial weights and its last measurement's states (uint8) and Q-values.
    anchors = len(GAMES)
    probe_bytes = sum(t.numel() * t.element_size() for s in state["probe"]["snapshots"].values() for t in s.values())
    monitor = state["plasticity"]
    weights = sum(t.numel() * t.element_size() for t in monitor["initial"].values())
    assert weights <= network_bytes and monitor["previous_states"].shape == (256, 4, 84, 84)
    plasticity_bytes = weights + 256 * 4 * 84 * 84 + monitor["previous_q"].numel() * 4
    expected = replay_bytes + network_bytes * (4 + 2 * anchors) + probe_bytes + plasticity_bytes
    assert expected <= path.stat().st_size <= expected * 1.02 + 2**20
    for milestone in milestones:
        assert milestone.stat().st_size <= 2 * network_bytes * 1.02 + 2**20
    last = load_checkpoint(milestones[-1])
    assert last["left_game"] == "MsPacman"
    final = state["learner"]["online"]
    assert all(torch.equal(last["learner"]["online"][name], final[name]) for name in final)
