"""One Atari env as training sees it, plus the real 210x160 RGB screen of every emulator frame (for videos).

AtariVectorEnv preprocesses in C++ and never shows the screen. `ScreenAtari` runs it with one env, so
the network gets exactly the training observations, beside a twin ALE emulator that is seeded alike
and fed the same actions frame by frame; the video is the twin's `getScreenRGB`. The twin replays what
AtariVectorEnv does (ale-py, src/ale/vector/preprocessed_env.cpp): at reset, FIRE once when fire reset is
on, then no-ops up to the episode frame number AtariVectorEnv reports (its no-op count comes from its
own generator); per agent step `frame_skip` frames, stopping early at game over or the episode cap.
Sticky actions draw from ALE's generator, seeded with the same seed, so both emulators repeat the same
actions. Every step checks that the two agree on frame number, lives and reward; tests/test_video.py
checks that the twin's frames, grayscaled, max-pooled and resized, are the observations themselves.
"""

from __future__ import annotations

import numpy as np
from ale_py import Action, ALEInterface, LoggerMode, roms

from envs.atari import MAX_SEED, AtariSettings, _make_ale_vector, resolve_game


class ScreenAtari:
    """A single env of `game` with the protocol `settings`: observations (4, 84, 84) and RGB screens."""

    def __init__(self, game: str, settings: AtariSettings):
        self.game, rom = resolve_game(game)
        self.settings = settings
        self._env = _make_ale_vector(rom, 1, settings, num_threads=1)
        ALEInterface.setLoggerMode(LoggerMode.Error)
        self._twin = ALEInterface()
        self._twin.setFloat("repeat_action_probability", settings.sticky_action_prob)
        self._rom_path = roms.get_rom_path(rom)
        self._twin.loadROM(self._rom_path)
        self._actions = self._twin.getLegalActionSet()  # the full 18-action set, as AtariVectorEnv's
        self._reset_frames = 0

    def reset(self, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """The first observation and the screen it was made from."""
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"Env seed {seed} is outside [0, 2^31); derive it with envs.derive_seed.")
        obs, info = self._env.reset(seed=seed)
        twin = self._twin
        twin.setInt("random_seed", seed)
        twin.loadROM(self._rom_path)
        twin.reset_game()
        self._reset_frames = int(info["episode_frame_number"][0])
        for frame in range(self._reset_frames):
            twin.act(Action.FIRE if frame == 0 and self.settings.fire_reset else Action.NOOP)
        self._check_in_sync(info, reward=0, twin_reward=0)
        return obs[0], [twin.getScreenRGB()]

    def step(self, action: int) -> tuple[np.ndarray, bool, list[np.ndarray]]:
        """The next observation, whether the episode is over, and the screen of each emulator frame."""
        obs, reward, terminated, truncated, info = self._env.step(np.array([action]))
        twin = self._twin
        frames, twin_reward = [], 0
        for _ in range(self.settings.frame_skip):
            twin_reward += twin.act(self._actions[action])
            frames.append(twin.getScreenRGB())
            elapsed = twin.getEpisodeFrameNumber() - self._reset_frames
            if twin.game_over() or elapsed >= self.settings.max_episode_frames:
                break
        self._check_in_sync(info, reward=reward[0], twin_reward=twin_reward)
        return obs[0], bool(terminated[0] or truncated[0]), frames

    def _check_in_sync(self, info: dict, reward: float, twin_reward: float) -> None:
        ours = (self._twin.getEpisodeFrameNumber(), self._twin.lives(), twin_reward)
        theirs = (int(info["episode_frame_number"][0]), int(info["lives"][0]), reward)
        if ours != theirs:
            raise RuntimeError(f"The screen emulator of {self.game} left AtariVectorEnv's (frame, lives, reward "
                               f"{ours} against {theirs}): this ale-py resets or steps differently from the one "
                               "envs/screen.py follows.")

    def close(self) -> None:
        self._env.close()
