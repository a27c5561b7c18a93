"""Real ALE environments: names, shapes, raw rewards, and the autoreset step never stored."""

import numpy as np
import pytest

from agent.replay import FrameReplay
from envs import NUM_ACTIONS, AtariSettings, make_vector_env, resolve_game


def assert_full_action_set(env):
    """Fail at once, not hang: ale-py's vector env waits for ever on an action outside a minimal action set."""
    actions = env._env.single_action_space.n
    assert actions == NUM_ACTIONS, (f"{env.game} offers {actions} actions, not the full set of {NUM_ACTIONS} "
                                    "(full_action_space=True): the agent's actions 0..17 would not all exist")


def test_game_names_as_users_write_them():
    assert resolve_game("Breakout") == ("Breakout", "breakout")
    assert resolve_game("ALE/MsPacman-v5") == ("MsPacman", "ms_pacman")
    assert resolve_game("ms_pacman") == ("MsPacman", "ms_pacman")
    assert resolve_game("spaceinvaders")[0] == "SpaceInvaders"


def test_unknown_game_lists_close_matches():
    with pytest.raises(ValueError, match="Unknown Atari game 'Brekout'.*Breakout"):
        resolve_game("Brekout")


@pytest.mark.parametrize("backend", ["ale_vector", "gymnasium"])
def test_backends_give_stacked_uint8_frames_and_full_action_set(backend):
    env = make_vector_env("Pong", 2, AtariSettings(), backend=backend)
    try:
        assert_full_action_set(env)
        obs = env.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        assert not obs[:, :3].any(), "reset stacks are zero-padded"
        step = env.step(np.full(2, NUM_ACTIONS - 1))
        assert step.obs.shape == (2, 4, 84, 84) and step.reward.dtype == np.float32
    finally:
        env.close()


def test_autoreset_pseudo_transition_is_never_stored():
    """Breakout with random actions ends episodes quickly; every stored transition is a real one."""
    env = make_vector_env("Breakout", 2, AtariSettings(sticky_action_prob=0.0, noop_max=0), backend="ale_vector")
    assert_full_action_set(env)
    replay = FrameReplay(capacity=2 * 2000, num_envs=2)
    rng = np.random.default_rng(0)
    real, pseudo = set(), set()
    obs = env.reset(seed=3)
    episodes = 0
    for _ in range(700):
        actions = rng.integers(NUM_ACTIONS, size=2)
        step = env.step(actions)
        over = step.terminated | step.truncated
        replay.add(obs, actions, step.reward, step.terminated, over, step.obs, mask=~step.was_reset)
        for e in range(2):
            key = (obs[e].tobytes(), step.obs[e].tobytes())
            (pseudo if step.was_reset[e] else real).add(key)
        episodes += int(over.sum())
        obs = step.obs
    env.close()
    assert episodes >= 2 and len(pseudo) >= 2
    env_idx, slot_idx = np.nonzero(replay.valid)
    windows = replay.windows(env_idx * replay.slots + slot_idx)
    stored = {(w[:-1].tobytes(), w[1:].tobytes()) for w in windows}
    assert stored <= real
    assert not stored & pseudo
    assert len(windows) >= 2 * 700 - len(pseudo) - 2  # all real transitions but the open ones


def test_an_action_out_of_range_is_an_error_not_a_hang():
    """ale-py's vector env waits for ever on an action it does not have; the wrapper refuses it first."""
    env = make_vector_env("Pong", 2, AtariSettings(), backend="ale_vector")
    try:
        env.reset(seed=0)
        for bad in ([0, 18], [-1, 0], [0]):
            with pytest.raises(ValueError, match="expected one action in 0..17 for each of the 2 envs"):
                env.send(np.array(bad))
        env.step(np.array([0, 17]))  # the envs still work
    finally:
        env.close()
