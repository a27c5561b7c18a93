"""The overlapped loop (emulators stepping while the learner updates) against the sequential one."""

from pathlib import Path

import numpy as np
import torch

from agent.config import load_config
from agent.dqn import epsilon_greedy, linear_epsilon
from agent.networks import QNetwork
from agent.replay import FrameReplay
from agent.trainer import Trainer
from envs import derive_seed, make_vector_env

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


def reference_replay(config) -> dict[str, np.ndarray]:
    """The first visit written the obvious way, with env.step, as the loop did before the actor existed."""
    torch.manual_seed(config.seed)
    network = QNetwork(18, config.network.architecture)
    rng = np.random.default_rng(config.seed)
    game, n = config.schedule.games[0], config.env.num_envs
    env = make_vector_env(game, n, config.env.atari_settings(), config.env.backend, config.env.num_threads)
    replay = FrameReplay(config.replay.capacity_per_game, n)
    obs = env.reset(seed=derive_seed(config.seed, 0, 0))
    lives = np.zeros(n, dtype=np.int64)
    eps = config.epsilon
    for step in range(0, config.schedule.steps_per_visit, n):
        actions = epsilon_greedy(network, obs, linear_epsilon(step, eps.start, eps.end, eps.decay_steps), rng,
                                 torch.device("cpu"), 18)
        result = env.step(actions)
        real = ~result.was_reset
        dones = result.terminated | (config.env.life_loss_terminal & (result.lives < lives) & real)
        replay.add(obs, actions, result.reward, dones, result.terminated | result.truncated, result.obs, mask=real)
        obs, lives = result.obs, result.lives
    env.close()
    return {f"{game}/{key}": value.numpy() for key, value in replay.state_dict().items()}


def test_with_updates_off_the_loop_stores_exactly_the_transitions_of_a_plain_env_step_loop(tmp_path):
    """Overlapped or not, the actor's send/recv loop writes what a plain `env.step` loop writes (greedy
    actions included: epsilon falls to 0.01 within the visit), with life loss as terminal too."""
    off = ["dqn.learning_starts=240", "env.life_loss_terminal=true"]
    for overlap in ("true", "false"):
        trainer = run(tmp_path, f"overlap-{overlap}", f"env.overlap={overlap}", *off)
        assert trainer.progress.updates == 0
        ours = {key: value for key, value in replay_arrays(trainer).items() if key.startswith("Breakout/")}
        assert ours["Breakout/dones"].sum() > 0  # lives were lost: the life-loss path was exercised
        assert_same(ours, reference_replay(trainer.config))


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
