"""The frame replay against stored full stacks: episode starts, several envs, wrap-around."""

import numpy as np
import pytest
import torch

from agent.replay import FrameReplay


class FakeVectorEnv:
    """Random frames with episode ends and truncations, zero-padded reset stacks (as ale-py)."""

    def __init__(self, num_envs, rng, end_prob=0.08):
        self.n, self.rng, self.end_prob = num_envs, rng, end_prob
        self.stacks = np.stack([self._reset_stack() for _ in range(num_envs)])

    def _frame(self):
        return self.rng.integers(1, 256, size=(84, 84), dtype=np.uint8)

    def _reset_stack(self):
        stack = np.zeros((4, 84, 84), dtype=np.uint8)
        stack[-1] = self._frame()
        return stack

    def step(self):
        obs = self.stacks.copy()
        nxt = np.concatenate([obs[:, 1:], np.stack([self._frame() for _ in range(self.n)])[:, None]], axis=1)
        ended = self.rng.random(self.n) < self.end_prob
        terminated = ended & (self.rng.random(self.n) < 0.7)
        truncated = ended & ~terminated
        self.stacks = nxt.copy()
        for e in np.flatnonzero(ended):  # the next episode starts from a fresh reset stack
            self.stacks[e] = self._reset_stack()
        return obs, nxt, terminated, truncated


def fill(replay, env, steps, rng, mask_prob=0.0):
    """Add `steps` vector steps; return {(env, slot): reference transition} for the STEP slots written."""
    reference = {}
    for _ in range(steps):
        obs, nxt, terminated, truncated = env.step()
        actions = rng.integers(18, size=env.n)
        rewards = rng.normal(size=env.n).astype(np.float32)
        mask = rng.random(env.n) >= mask_prob
        for e in np.flatnonzero(mask):
            start = replay.cursor[e] + (0 if replay.open[e] else replay.stack - 1)
            reference[(e, start % replay.slots)] = (obs[e].copy(), actions[e], rewards[e], terminated[e], nxt[e].copy())
        replay.add(obs, actions, rewards, terminated, terminated | truncated, nxt, mask=mask)
        if mask_prob:  # an env left out of a step stands for one whose episode was interrupted
            for e in np.flatnonzero(~mask):
                env.stacks[e] = env._reset_stack()
                replay.open[e] = False
    return reference


def check_all_valid(replay, reference):
    env_idx, slot_idx = np.nonzero(replay.valid)
    flat = env_idx * replay.slots + slot_idx
    windows = replay.windows(flat)
    for i, (e, t) in enumerate(zip(env_idx, slot_idx)):
        obs, action, reward, done, nxt = reference[(e, t)]
        np.testing.assert_array_equal(windows[i, :-1], obs)
        np.testing.assert_array_equal(windows[i, 1:], nxt)
        assert replay.actions[e, t] == action
        assert replay.rewards[e, t] == reward
        assert replay.dones[e, t] == done
    return len(flat)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_stacks_match_stored_full_stacks_across_episodes_and_envs(num_envs):
    rng = np.random.default_rng(0)
    replay = FrameReplay(capacity=400 * num_envs, num_envs=num_envs)
    reference = fill(replay, FakeVectorEnv(num_envs, rng), 150, rng)
    checked = check_all_valid(replay, reference)
    # Every transition but the newest open one per env is sampleable (no wrap yet).
    assert checked == len(reference) - int(replay.open.sum())


def test_wraparound_keeps_only_transitions_with_intact_history():
    rng = np.random.default_rng(1)
    replay = FrameReplay(capacity=2 * 64, num_envs=2)
    reference = fill(replay, FakeVectorEnv(2, rng), 500, rng)  # wraps many times
    checked = check_all_valid(replay, reference)
    assert checked > 0.8 * 2 * 64 - 2 * 10


def test_masked_envs_and_closed_episodes_never_join_two_episodes():
    rng = np.random.default_rng(2)
    replay = FrameReplay(capacity=3 * 200, num_envs=3)
    reference = fill(replay, FakeVectorEnv(3, rng), 150, rng, mask_prob=0.2)
    check_all_valid(replay, reference)


def test_sample_shapes_types_and_errors():
    rng = np.random.default_rng(3)
    replay = FrameReplay(capacity=256, num_envs=2)
    with pytest.raises(ValueError, match="no complete transition"):
        replay.sample(4, rng)
    fill(replay, FakeVectorEnv(2, rng), 40, rng)
    batch = replay.sample(32, rng)
    assert batch.obs.shape == (32, 4, 84, 84) and batch.obs.dtype == torch.uint8
    assert batch.actions.dtype == torch.int64 and batch.dones.dtype == torch.float32
    assert replay.sample_states(5, rng).shape == (5, 4, 84, 84)
    with pytest.raises(ValueError, match="too small"):
        FrameReplay(capacity=10, num_envs=4)


def test_memory_is_about_one_frame_per_transition():
    replay = FrameReplay(capacity=10_000, num_envs=8)
    per_transition = replay.nbytes / 10_000
    assert 84 * 84 <= per_transition < 84 * 84 + 16


def test_state_dict_round_trip():
    rng = np.random.default_rng(4)
    replay = FrameReplay(capacity=256, num_envs=2)
    fill(replay, FakeVectorEnv(2, rng), 60, rng)
    restored = FrameReplay(capacity=256, num_envs=2)
    restored.load_state_dict(replay.state_dict())
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    first, second = replay.sample(16, a), restored.sample(16, b)
    assert torch.equal(first.obs, second.obs) and torch.equal(first.next_obs, second.next_obs)
    assert replay.state_dict()["frames"].shape[1] < replay.slots  # only the written slots are saved
    with pytest.raises(ValueError, match="capacity or env count"):
        FrameReplay(capacity=512, num_envs=4).load_state_dict(replay.state_dict())
    full = FrameReplay(capacity=64, num_envs=2)
    fill(full, FakeVectorEnv(2, rng), 100, rng)  # wrapped
    with pytest.raises(ValueError, match="capacity"):
        FrameReplay(capacity=128, num_envs=2).load_state_dict(full.state_dict())
