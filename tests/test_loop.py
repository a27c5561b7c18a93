"""The overlapped loop (emulators stepping while the learner updates) against the sequential one."""

from pathlib import Path

import numpy as np
import torch

from agent.config import load_config
from agent.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, name: str, *overrides: str) -> Trainer:
    config = load_config(ROOT / "configs" / "smoke.yaml", [
        "schedule.games=[Breakout, Pong]", "schedule.steps_per_visit=240", "env.num_envs=4",
        "replay.capacity_per_game=1024", "dqn.target_update_every=100", "epsilon.decay_steps=200",
        "consolidation.fisher_batches=2", "consolidation.probe_states=16", "consolidation.probe_every=120",
        "eval.episodes=0", "logging.progress_bar=false", "logging.log_every=120", "torch_threads=1", *overrides])
    trainer = Trainer(config, tmp_path / name)
    assert trainer.train() == 0
    return trainer


def replay_arrays(trainer: Trainer) -> dict[str, np.ndarray]:
    return {f"{game}/{key}": value.numpy() for game, replay in trainer.replays.items()
            for key, value in replay.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_with_updates_off_the_overlapped_loop_stores_exactly_the_sequential_transitions(tmp_path):
    # learning_starts beyond the visit: no update, the greedy actions come from the same network.
    off = ["dqn.learning_starts=240"]
    overlapped = run(tmp_path, "overlapped", "env.overlap=true", *off)
    sequential = run(tmp_path, "sequential", "env.overlap=false", *off)
    assert overlapped.progress.updates == sequential.progress.updates == 0
    arrays = replay_arrays(overlapped)
    assert arrays["Breakout/written"].sum() > 240 and arrays["Pong/written"].sum() > 240
    assert_same(arrays, replay_arrays(sequential))


def test_a_seeded_overlapped_run_with_updates_gives_the_same_result_twice(tmp_path):
    on = ["dqn.learning_starts=64", "env.overlap=true"]
    first, second = run(tmp_path, "first", *on), run(tmp_path, "second", *on)
    assert first.progress.updates == second.progress.updates > 60
    assert_same(replay_arrays(first), replay_arrays(second))
    for name, value in first.network.state_dict().items():
        assert torch.equal(value, second.network.state_dict()[name]), name
    # And the overlap changes what the updates see (they sample the replay one vector step behind).
    sequential = run(tmp_path, "sequential", "dqn.learning_starts=64", "env.overlap=false")
    assert any(not torch.equal(value, sequential.network.state_dict()[name])
               for name, value in first.network.state_dict().items())
