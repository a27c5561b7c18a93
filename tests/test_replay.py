"""The frame replay against stored full stacks: episode starts, several envs, wrap-around."""

import io

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


# Frames stored in a torch tensor (FrameReplay(device=...)) against the default numpy storage.

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
ARRAYS = ("actions", "rewards", "dones", "kinds", "valid", "cursor", "written", "open")


def host_frames(replay):
    return replay.frames if isinstance(replay.frames, np.ndarray) else replay.frames.cpu().numpy()


def fill_pair(capacity, num_envs, steps, seed, mask_prob, device):
    """A numpy and a `device` replay fed the identical stream."""
    pair = []
    for storage in (None, device):
        rng = np.random.default_rng(seed)
        replay = FrameReplay(capacity=capacity, num_envs=num_envs, device=storage)
        reference = fill(replay, FakeVectorEnv(num_envs, rng, end_prob=0.15), steps, rng, mask_prob=mask_prob)
        pair.append((replay, reference))
    return pair


def assert_same_replay(host, other, seed=5):
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(host, name), getattr(other, name), err_msg=name)
    np.testing.assert_array_equal(host_frames(host), host_frames(other))
    assert len(host) == len(other) and host.full == other.full
    a, b = np.random.default_rng(seed), np.random.default_rng(seed)
    for n in (1, 32, 100):
        first, second = host.sample(n, a), other.sample(n, b)
        for field in ("obs", "actions", "rewards", "dones", "next_obs"):
            x, y = getattr(first, field), getattr(second, field)
            assert x.device.type == y.device.type == "cpu" and x.dtype == y.dtype and torch.equal(x, y), field
    np.testing.assert_array_equal(host.sample_states(20, a), other.sample_states(20, b))
    flat = np.flatnonzero(host.valid)
    np.testing.assert_array_equal(host.windows(flat), other.windows(flat))


@pytest.mark.parametrize("device", DEVICES)
def test_device_storage_equals_host_storage(device):
    # Masks, episode ends and truncations; checked before the rings wrap and after many wraps.
    (host, reference), (other, _) = fill_pair(3 * 200, 3, 60, seed=6, mask_prob=0.2, device=device)
    assert isinstance(other.frames, torch.Tensor) and other.frames.device.type == device
    assert not host.full
    assert_same_replay(host, other)
    check_all_valid(other, reference)
    (host, reference), (other, _) = fill_pair(3 * 40, 3, 300, seed=7, mask_prob=0.2, device=device)
    assert host.full
    assert_same_replay(host, other)
    check_all_valid(other, reference)
    assert host.nbytes == other.nbytes
    batch = other.sample(8, np.random.default_rng(0), device)  # a batch on the storage's device
    assert batch.obs.device.type == device and batch.actions.device.type == device
    assert batch.obs.data_ptr() == batch.next_obs.data_ptr() - 84 * 84  # views of one gathered window


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("capacity,steps", [(2 * 200, 40), (2 * 40, 200)], ids=["partial", "wrapped"])
def test_state_dict_moves_between_storages(device, capacity, steps):
    (host, _), (other, _) = fill_pair(capacity, 2, steps, seed=8, mask_prob=0.1, device=device)
    host_state, device_state = host.state_dict(), other.state_dict()
    assert set(host_state) == set(device_state)
    for name, tensor in device_state.items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, host_state[name]), name
    frames = device_state["frames"]
    assert frames.untyped_storage().nbytes() == host_state["frames"].untyped_storage().nbytes() == frames.nbytes
    if capacity == 2 * 200:  # partly written: only the written slots, in a storage of their own
        assert frames.shape[1] < other.slots
        saved = [io.BytesIO() for _ in range(2)]
        torch.save(host_state, saved[0])
        torch.save(device_state, saved[1])
        assert len(saved[0].getvalue()) == len(saved[1].getvalue())
    for source, storage in ((other, None), (host, device), (other, device)):
        restored = FrameReplay(capacity=capacity, num_envs=2, device=storage)
        restored.load_state_dict(source.state_dict())
        assert_same_replay(host, restored)


def test_device_storage_that_cannot_be_allocated_says_what_to_do(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.57 GiB")

    monkeypatch.setattr(torch, "zeros", out_of_memory)
    with pytest.raises(ValueError, match=r"705,600,000 bytes.*capacity_per_game.*host memory"):
        FrameReplay(capacity=100_000, num_envs=8, device="cpu")
