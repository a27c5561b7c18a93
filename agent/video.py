"""Videos of the agent playing: one .mp4 per game, the real 210x160 RGB screen, every emulator frame.

The network acts on the training observations (envs/screen.py) with the evaluation's epsilon; the
video shows each of the frame-skipped frames, at the Atari's 60 frames per second (real time). The
files are H.264 in MP4 (yuv420p, what browsers and players read), written with PyAV, the optional
extra `video`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agent.config import ConfigError
from agent.dqn import epsilon_greedy
from envs import NUM_ACTIONS, AtariSettings, derive_seed
from envs.screen import ScreenAtari

FPS = 60  # the Atari's NTSC frame rate


def check_video_library() -> None:
    """Raise ConfigError, saying what to install, when PyAV is missing."""
    try:
        import av  # noqa: F401
    except ImportError:
        raise ConfigError("--video needs PyAV: pip install -e '.[video]' (or pip install av).") from None


def video_path(directory: Path, game: str, step: int) -> Path:
    return directory / f"{game}-step-{step}.mp4"


@torch.no_grad()
def record_video(network: nn.Module, game: str, path: Path, max_frames: int, epsilon: float = 0.05, seed: int = 0,
                 settings: AtariSettings | None = None) -> int:
    """Play one episode of `game`, at most `max_frames` emulator frames of it, into `path`; the frames written.

    `seed` plays as in agent.evaluation.play_episodes (the env seed is derived from it). The file appears
    only when complete."""
    import av

    if max_frames <= 0:
        raise ValueError(f"max_frames must be positive, got {max_frames}.")
    device = next(network.parameters()).device
    rng = np.random.default_rng(seed)
    env = ScreenAtari(game, settings or AtariSettings())
    partial = path.with_name(path.name + ".partial")
    written = 0
    try:
        obs, frames = env.reset(derive_seed(seed))
        # faststart: the index goes first, so browsers start playing before the whole file has arrived
        with av.open(str(partial), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.height, stream.width = frames[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            over = False
            while True:
                for frame in frames[:max_frames - written]:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                    written += 1
                if over or written == max_frames:
                    break
                action = epsilon_greedy(network, obs[None], epsilon, rng, device, NUM_ACTIONS)[0]
                obs, over, frames = env.step(int(action))
            container.mux(stream.encode())  # flush the encoder
        os.replace(partial, path)
    finally:
        env.close()
        partial.unlink(missing_ok=True)
    return written
