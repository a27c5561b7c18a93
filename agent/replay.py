"""Replay memory that stores single frames and rebuilds frame stacks on sampling.

Dopamine's layout, extended to interleaved environments: every env writes its own
ring of slots, one 84x84 frame per slot, so a transition costs about one frame
(~7 KB) instead of two full stacks (~56 KB). Each episode begins with the first
`stack - 1` frames of its reset observation (HISTORY slots; zeros for ale-py's
zero-padded reset), one STEP slot per action taken, and, when the episode ends, an
END slot holding the final frame. The window of slots t-3..t+1 therefore always lies
inside one episode: obs = frames[t-3..t], next_obs = frames[t-2..t+1], with no
padding logic at sampling time and exact next states at truncation too.

The frames live in host memory by default. With `device` set they live in a torch
tensor on that device (e.g. the GPU): `add` copies each vector step's new frames
there once, and `sample` gathers the stacks there, with no host round trip. The
per-slot metadata stays on the host, so the sampled indices are the same either way.

Knows nothing about the agent: numpy in, numpy or torch out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

HISTORY, STEP, END = 0, 1, 2


@dataclass
class Batch:
    obs: torch.Tensor  # (B, 4, 84, 84) uint8
    actions: torch.Tensor  # (B,) int64
    rewards: torch.Tensor  # (B,) float32, raw
    dones: torch.Tensor  # (B,) float32: 1 where the target must not bootstrap
    next_obs: torch.Tensor  # (B, 4, 84, 84) uint8

    def chunks(self, size: int):
        """Consecutive sub-batches of at most `size` transitions."""
        for start in range(0, len(self.actions), size):
            yield Batch(*(getattr(self, f.name)[start:start + size] for f in dataclasses.fields(self)))


class FrameReplay:
    """Replay for one game, written by `num_envs` interleaved environments."""

    def __init__(self, capacity: int, num_envs: int, stack: int = 4, frame_shape: tuple[int, int] = (84, 84),
                 device: torch.device | str | None = None):
        slots = capacity // num_envs
        if capacity < self.minimum_capacity(num_envs, stack):
            raise ValueError(f"Replay capacity {capacity} is too small for {num_envs} envs: "
                             f"need at least {self.minimum_capacity(num_envs, stack)}.")
        self.stack = stack
        self.num_envs = num_envs
        self.slots = slots
        # None: frames in a numpy array. A torch device: frames in a uint8 tensor there.
        self.device = None if device is None else torch.device(device)
        shape = (num_envs, slots, *frame_shape)
        self.frames: np.ndarray | torch.Tensor
        if self.device is None:
            self.frames = np.zeros(shape, dtype=np.uint8)
        else:
            try:
                self.frames = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                need = math.prod(shape)
                raise ValueError(f"Cannot allocate the replay's frames on {self.device}: {need:,} bytes "
                                 f"({need / 2**30:.2f} GiB) needed ({exc}). Lower replay.capacity_per_game, "
                                 "or keep the replay in host memory.") from exc
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # device storage: frames of the current add
        self.actions = np.zeros((num_envs, slots), dtype=np.uint8)
        self.rewards = np.zeros((num_envs, slots), dtype=np.float32)
        self.dones = np.zeros((num_envs, slots), dtype=bool)
        self.kinds = np.zeros((num_envs, slots), dtype=np.uint8)
        # valid[e, t]: a transition starting at slot t can be sampled.
        self.valid = np.zeros((num_envs, slots), dtype=bool)
        self.cursor = np.zeros(num_envs, dtype=np.int64)
        self.written = np.zeros(num_envs, dtype=np.int64)  # slots ever written, per env
        # open[e]: env e is inside an episode whose last written slot is a STEP.
        self.open = np.zeros(num_envs, dtype=bool)

    @staticmethod
    def minimum_capacity(num_envs: int, stack: int = 4) -> int:
        """Each env's ring needs room for one frame stack plus a few steps."""
        return (stack + 4) * num_envs

    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def full(self) -> bool:
        """Every slot has been written: the buffer holds as many transitions as it ever will."""
        return bool((self.written >= self.slots).all())

    @property
    def nbytes(self) -> int:
        """Bytes of the per-slot storage, the frames included wherever they live."""
        arrays = (self.frames, self.actions, self.rewards, self.dones, self.kinds, self.valid)
        return sum(a.nbytes for a in arrays)

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray,
            episode_ends: np.ndarray, next_obs: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Store one vector step: obs[e] --actions[e]--> next_obs[e] for every env e in `mask`.

        `dones` stops bootstrapping (termination, or a lost life when configured);
        `episode_ends` says the env's episode is over (terminated or truncated).
        """
        envs = np.arange(self.num_envs) if mask is None else np.flatnonzero(mask)
        starting = envs[~self.open[envs]]
        for k in range(self.stack - 1):
            self._write(starting, obs[starting, k], HISTORY)
        self._write(envs, obs[envs, -1], STEP, actions[envs], rewards[envs], dones[envs])
        self.open[envs] = True
        ending = envs[np.asarray(episode_ends, dtype=bool)[envs]]
        self._write(ending, next_obs[ending, -1], END)
        self.open[ending] = False
        if self._pending:
            self._flush()

    def close_episodes(self) -> None:
        """Forget the episodes in progress (the envs are closed at a game switch)."""
        self.open[:] = False

    def _write(self, envs: np.ndarray, frames: np.ndarray, kind: int, actions=0, rewards=0.0, dones=False) -> None:
        if len(envs) == 0:
            return
        slot = self.cursor[envs]
        # The slots after `slot` are the oldest; overwriting `slot` removes their history.
        for ahead in range(1, self.stack):
            self.valid[envs, (slot + ahead) % self.slots] = False
        if self.device is None:
            self.frames[envs, slot] = frames
        else:  # copied to the device at the end of `add`, all at once
            self._pending.append((envs * self.slots + slot, frames))
        self.actions[envs, slot] = actions
        self.rewards[envs, slot] = rewards
        self.dones[envs, slot] = dones
        self.kinds[envs, slot] = kind
        self.valid[envs, slot] = False
        if kind != HISTORY:
            # The STEP before this slot now has its next frame.
            previous = (slot - 1) % self.slots
            self.valid[envs, previous] = self.open[envs] & (self.kinds[envs, previous] == STEP)
        self.cursor[envs] = (slot + 1) % self.slots
        self.written[envs] += 1

    def _flush(self) -> None:
        """Device storage: write one add's frames with one copy (its slots are distinct: the ring is longer)."""
        flat = np.concatenate([index for index, _ in self._pending])
        frames = np.concatenate([frames for _, frames in self._pending]).astype(np.uint8, copy=False)
        self._pending.clear()
        # Pageable sources are staged by the copy before it returns, so no sync is needed.
        self._flat_frames().index_copy_(0, torch.from_numpy(flat).to(self.device, non_blocking=True),
                                        torch.from_numpy(frames).to(self.device, non_blocking=True))

    def _flat_frames(self) -> torch.Tensor:
        """Device storage: the frames as (num_envs * slots, H, W), a view."""
        return self.frames.view(-1, *self.frames.shape[2:])

    def _window_slots(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        env, slot = np.divmod(indices, self.slots)
        offsets = np.arange(-(self.stack - 1), 2)
        return env[:, None], (slot[:, None] + offsets) % self.slots

    def _device_windows(self, indices: np.ndarray) -> torch.Tensor:
        """Device storage: windows() gathered on the device."""
        env, slot = self._window_slots(indices)
        flat = torch.from_numpy((env * self.slots + slot).ravel()).to(self.device, non_blocking=True)
        # index_select, not [flat]: on the CPU, advanced indexing copies byte by byte (~20x slower).
        return self._flat_frames().index_select(0, flat).view(*slot.shape, *self.frames.shape[2:])

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        candidates = np.flatnonzero(self.valid)
        if len(candidates) == 0:
            raise ValueError("The replay buffer holds no complete transition yet.")
        return candidates[rng.integers(len(candidates), size=n)]

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """(B, stack + 1, H, W) frames t-stack+1 .. t+1 for flat slot indices, on the host."""
        if self.device is not None:
            return self._device_windows(indices).cpu().numpy()
        return self.frames[self._window_slots(indices)]

    def sample(self, n: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> Batch:
        indices = self.sample_indices(n, rng)
        if self.device is None:
            window = torch.from_numpy(self.windows(indices)).to(device, non_blocking=True)
        else:
            window = self._device_windows(indices).to(device, non_blocking=True)
        env, slot = np.divmod(indices, self.slots)

        def column(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(array[env, slot]).to(device=device, dtype=dtype, non_blocking=True)

        return Batch(
            obs=window[:, :-1],
            actions=column(self.actions, torch.int64),
            rewards=column(self.rewards, torch.float32),
            dones=column(self.dones, torch.float32),
            next_obs=window[:, 1:],
        )

    def sample_states(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, stack, H, W) uint8 observations of stored transitions, e.g. for a Fisher estimate."""
        return np.ascontiguousarray(self.windows(self.sample_indices(n, rng))[:, :-1])

    _PER_SLOT = ("frames", "actions", "rewards", "dones", "kinds", "valid")
    _PER_ENV = ("cursor", "written", "open")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Only the slots written so far: a checkpoint grows with the data, not with the capacity.

        torch.save writes the whole storage behind a view, so a partly written buffer is copied
        (a full one is saved as it is, with no copy). Frames on a device are copied to the host:
        the state is CPU tensors, the same for either storage."""
        used = int(min(self.slots, self.written.max()))

        def written_part(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array if used == self.slots else np.ascontiguousarray(array[:, :used]))

        state = {name: written_part(getattr(self, name)) for name in self._PER_SLOT if name != "frames"}
        state["frames"] = written_part(self.frames) if self.device is None else self._host_frames(used)
        state.update({name: torch.from_numpy(getattr(self, name)) for name in self._PER_ENV})
        return state

    def _host_frames(self, used: int) -> torch.Tensor:
        """Device storage: the first `used` slots of every env in a CPU tensor of their own size.

        Env by env, so that a partly written buffer needs no second copy on the device."""
        if used == self.slots:
            return self.frames.cpu()  # device "cpu": the tensor itself, as the numpy storage saves its array
        part = torch.empty((self.num_envs, used, *self.frames.shape[2:]), dtype=torch.uint8)
        for env in range(self.num_envs):
            part[env].copy_(self.frames[env, :used])
        return part

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Accepts either storage's state (CPU tensors); the frames go to this buffer's storage."""
        used = state["frames"].shape[1]
        if state["cursor"].shape != self.cursor.shape or used > self.slots \
                or tuple(state["frames"].shape[2:]) != self.frames.shape[2:]:
            raise ValueError(f"The checkpoint's replay ({state['cursor'].shape[0]} envs, {used} slots written) does "
                             f"not fit this buffer ({self.num_envs} envs x {self.slots} slots): "
                             "the replay capacity or env count differs from the checkpoint's.")
        if used < self.slots and int(state["written"].max()) > used:
            raise ValueError("The checkpoint's replay has wrapped around a smaller capacity: "
                             "the replay capacity differs from the checkpoint's.")
        for name in self._PER_SLOT:
            if name == "frames" and self.device is not None:
                for env in range(self.num_envs):  # env by env: no second copy of the buffer on the device
                    self.frames[env, :used].copy_(state["frames"][env])
            else:
                getattr(self, name)[:, :used] = state[name].cpu().numpy()
        for name in self._PER_ENV:
            getattr(self, name)[...] = state[name].cpu().numpy()
