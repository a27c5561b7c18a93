"""Vectorised Atari: ale-py's C++ AtariVectorEnv, or gymnasium's AsyncVectorEnv as a fallback.

Both backends give `(N, 4, 84, 84)` uint8 observations, the full 18-action set, raw
(unclipped) float rewards, and gymnasium's NEXT_STEP autoreset: the step after an
episode ends returns the reset observation with reward 0. That step is not a real
transition; `VectorAtari.step` marks it in `StepResult.was_reset` so it is never stored.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

import ale_py
import gymnasium as gym
import numpy as np

NUM_ACTIONS = 18
FRAME_STACK = 4
FRAME_SIZE = 84
MAX_SEED = 2**31  # ale-py hands reset seeds to a C++ int: larger ones raise a TypeError
MAX_ENVS = 2**16  # ale-py seeds env i of a vector env with seed + i: derived seeds leave room for them


def derive_seed(*entropy: int) -> int:
    """A seed in [0, 2^31 - 2^16) mixed from non-negative integers of any size (e.g. seed, step)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0] % (MAX_SEED - MAX_ENVS))


@dataclass(frozen=True)
class AtariSettings:
    """Protocol settings (Machado et al. 2018 defaults)."""

    sticky_action_prob: float = 0.25
    noop_max: int = 30
    fire_reset: bool = True
    max_episode_frames: int = 108_000
    frame_skip: int = 4


@lru_cache(maxsize=1)
def _game_table() -> dict[str, tuple[str, str]]:
    """Lookup key -> (display name, ROM id) for every ROM that ships with ale-py."""
    from ale_py import roms

    gym.register_envs(ale_py)
    display = {}
    for env_id in gym.envs.registry:
        match = re.fullmatch(r"ALE/(\w+)-v5", env_id)
        if match:
            display[_key(match.group(1))] = match.group(1)
    table = {}
    for rom in roms.get_all_rom_ids():
        key = _key(rom)
        name = display.get(key, "".join(part.capitalize() for part in rom.split("_")))
        table[key] = (name, rom)
    return table


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_game(name: str) -> tuple[str, str]:
    """Map a user's game name to (display name, ROM id).

    Accepts `Breakout`, `breakout`, `ms_pacman`, `MsPacman` or `ALE/MsPacman-v5`.
    """
    stripped = re.sub(r"^ALE/|-v\d+$", "", name.strip())
    table = _game_table()
    found = table.get(_key(stripped))
    if found is None:
        names = [display for display, _ in table.values()]
        close = difflib.get_close_matches(stripped, names, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown Atari game {name!r}.{hint} Games are named as in ALE ids, "
            f"e.g. 'Breakout', 'MsPacman' or 'ALE/Pong-v5' ({len(names)} ROMs ship with ale-py)."
        )
    return found


@dataclass
class StepResult:
    obs: np.ndarray  # (N, 4, 84, 84) uint8
    reward: np.ndarray  # (N,) float32, raw game score
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    lives: np.ndarray  # (N,) int
    was_reset: np.ndarray  # (N,) bool: this step only reset the env (autoreset), no transition


class VectorAtari:
    """N copies of one game behind one interface, whatever the backend."""

    def __init__(self, game: str, num_envs: int, settings: AtariSettings, backend: str, num_threads: int = 0):
        self.game, self.rom = resolve_game(game)
        self.num_envs = num_envs
        self.backend = backend
        check_backend(backend)
        if backend == "ale_vector":
            self._env = _make_ale_vector(self.rom, num_envs, settings, num_threads)
        else:
            self._env = _make_gymnasium_vector(self.game, num_envs, settings)
        self._episode_over = np.zeros(num_envs, dtype=bool)

    def reset(self, seed: int) -> np.ndarray:
        if not 0 <= seed <= MAX_SEED - self.num_envs:
            raise ValueError(f"Env seed {seed} is outside [0, 2^31 - {self.num_envs}] (ale-py seeds env i with "
                             "seed + i); derive it with envs.derive_seed.")
        obs, _ = self._env.reset(seed=seed)
        self._episode_over[:] = False
        return np.asarray(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        """Start stepping every env with `actions`; the emulators run in their own threads (ale_vector) or
        processes (gymnasium) until `recv`, so the caller can work in between."""
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != (self.num_envs,) or actions.min() < 0 or actions.max() >= NUM_ACTIONS:
            # ale-py's vector env waits for ever on an action it does not have: fail here, clearly
            raise ValueError(f"{self.game}: expected one action in 0..{NUM_ACTIONS - 1} for each of the "
                             f"{self.num_envs} envs, got {actions.tolist()}")
        if self.backend == "ale_vector":
            self._env.send(actions)
        else:
            self._env.step_async(actions)

    def recv(self) -> StepResult:
        """Wait for the step that `send` started."""
        if self.backend == "ale_vector":
            obs, reward, terminated, truncated, info = self._env.ale.recv()
        else:
            obs, reward, terminated, truncated, info = self._env.step_wait()
        was_reset = self._episode_over.copy()
        terminated = np.asarray(terminated, dtype=bool) & ~was_reset
        truncated = np.asarray(truncated, dtype=bool) & ~was_reset
        self._episode_over = terminated | truncated
        return StepResult(
            obs=np.asarray(obs),
            reward=np.asarray(reward, dtype=np.float32),
            terminated=terminated,
            truncated=truncated,
            lives=np.asarray(info["lives"]),
            was_reset=was_reset,
        )

    def close(self) -> None:
        self._env.close()


def make_vector_env(game: str, num_envs: int, settings: AtariSettings | None = None,
                    backend: str = "ale_vector", num_threads: int = 0) -> VectorAtari:
    return VectorAtari(game, num_envs, settings or AtariSettings(), backend, num_threads)


def _make_ale_vector(rom: str, num_envs: int, settings: AtariSettings, num_threads: int):
    from ale_py.vector_env import AtariVectorEnv

    # AtariVectorEnv's own defaults differ from the v5 protocol: no sticky actions and
    # clipped rewards. Every protocol setting is passed explicitly.
    return AtariVectorEnv(
        rom,
        num_envs,
        num_threads=num_threads,
        frameskip=settings.frame_skip,
        repeat_action_probability=settings.sticky_action_prob,
        full_action_space=True,
        noop_max=settings.noop_max,
        use_fire_reset=settings.fire_reset,
        max_num_frames_per_episode=settings.max_episode_frames,
        reward_clipping=False,
        episodic_life=False,
        stack_num=FRAME_STACK,
        img_height=FRAME_SIZE,
        img_width=FRAME_SIZE,
    )


def check_backend(backend: str) -> None:
    """Raise ValueError, saying what to install, when `backend` cannot run here."""
    if backend == "ale_vector":
        return
    if backend != "gymnasium":
        raise ValueError(f"Unknown env backend {backend!r}: use 'ale_vector' or 'gymnasium'.")
    try:
        import cv2  # noqa: F401  (gymnasium's AtariPreprocessing resizes frames with OpenCV)
    except ImportError:
        raise ValueError("env.backend=gymnasium needs OpenCV: pip install -e '.[gymnasium]' "
                         "(or use env.backend=ale_vector, the default).") from None


def _make_gymnasium_vector(game: str, num_envs: int, settings: AtariSettings):
    def make_one():
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        gym.register_envs(ale_py)
        env = gym.make(
            f"ALE/{game}-v5",
            frameskip=1,
            repeat_action_probability=settings.sticky_action_prob,
            full_action_space=True,
            max_num_frames_per_episode=settings.max_episode_frames,
        )
        env = AtariPreprocessing(env, noop_max=settings.noop_max, frame_skip=settings.frame_skip,
                                 screen_size=FRAME_SIZE, terminal_on_life_loss=False)
        if settings.fire_reset:
            env = FireReset(env)
        return FrameStackObservation(env, FRAME_STACK, padding_type="zero")

    return gym.vector.AsyncVectorEnv([make_one] * num_envs)


class FireReset(gym.Wrapper):
    """Press FIRE after reset in games that need it to start (as AtariVectorEnv's fire reset)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        meanings = self.env.unwrapped.get_action_meanings()
        if "FIRE" in meanings:
            obs, _, terminated, truncated, info = self.env.step(meanings.index("FIRE"))
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info
