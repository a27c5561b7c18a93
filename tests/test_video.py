"""evaluate.py --video: one readable .mp4 per game of the real screen, the screen is what the network sees,
refusals into a run's record, and the missing-library message."""

import sys

import av
import cv2
import numpy as np
import pytest
from test_train import tiny_run

from agent.cli import evaluate_main
from envs import AtariSettings, derive_seed
from envs.screen import ScreenAtari


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("video") / "run", "Breakout, Pong", 16)


def evaluate_args(run_dir, *extra):
    return ["--checkpoint", str(run_dir), "--episodes", "1", "--num-envs", "1", "--max-episode-frames", "240",
            "--seed", "3", *extra]


def read_video(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_one_video_per_game_of_the_real_screen(run_dir, capsys):
    videos = run_dir / "videos"  # beside the record, not in it: allowed
    assert evaluate_main(evaluate_args(run_dir, "--video", str(videos), "--video-frames", "200")) == 0
    assert "Wrote" in capsys.readouterr().err
    assert sorted(p.name for p in videos.iterdir()) == ["Breakout-step-32.mp4", "Pong-step-32.mp4"]
    for index, game in enumerate(["Breakout", "Pong"]):
        frames = read_video(videos / f"{game}-step-32.mp4")
        assert len(frames) == 200
        assert {frame.shape for frame in frames} == {(210, 160, 3)}
        # The first frame is the game's screen after the evaluation's seeded reset (H.264 is lossy).
        env = ScreenAtari(game, AtariSettings())
        _, [screen] = env.reset(derive_seed(derive_seed(3, index)))
        env.close()
        assert np.abs(frames[0].astype(int) - screen).mean() < 4, game


@pytest.mark.parametrize("game", ["Breakout", "MsPacman"])
def test_the_screen_is_what_the_network_sees(game):
    """The twin emulator's frames, grayscaled (cv2's weights equal ALE's grayscale palette), max-pooled over
    the last two frames and resized as AtariVectorEnv does, give its observations exactly, sticky actions and
    no-op starts included: the video shows the very game the agent played."""

    def observed(last_two):
        gray = np.maximum(*(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in last_two))
        return cv2.resize(gray, (84, 84), interpolation=cv2.INTER_AREA)

    env = ScreenAtari(game, AtariSettings())
    rng = np.random.default_rng(0)
    try:
        obs, [screen] = env.reset(derive_seed(7))
        assert not obs[:3].any() and np.array_equal(obs[3], observed([screen, np.zeros_like(screen)]))
        for _ in range(300):
            obs, over, frames = env.step(int(rng.integers(18)))
            if over:  # AtariVectorEnv stops at game over before reading the screen
                break
            assert len(frames) == 4
            assert np.array_equal(obs[3], observed(frames[-2:]))
    finally:
        env.close()


def test_the_screen_stops_with_the_episode_cap():
    env = ScreenAtari("Pong", AtariSettings(max_episode_frames=50))
    try:
        env.reset(derive_seed(1))
        shown, over = 0, False
        while not over:  # ScreenAtari raises if its emulator runs past AtariVectorEnv's
            _, over, frames = env.step(0)
            shown += len(frames)
        assert shown == 50
    finally:
        env.close()


def test_video_into_a_run_record_or_a_file_is_refused(run_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"keep me")
    assert evaluate_main(evaluate_args(run_dir, "--video", str(blocker))) == 2
    assert f"cannot create video directory {blocker}: {blocker} is a file" in capsys.readouterr().err
    assert blocker.read_bytes() == b"keep me"
    before = {p: p.read_bytes() if p.is_file() else None for p in run_dir.rglob("*")}
    for directory in (run_dir / "tb", run_dir / "checkpoints" / "videos", run_dir / "milestones"):
        assert evaluate_main(evaluate_args(run_dir, "--video", str(directory))) == 2
        err = capsys.readouterr().err
        assert f"into the record of the run in {run_dir}" in err and f"--video {run_dir / 'videos'}" in err
    assert evaluate_main(evaluate_args(run_dir, "--video", str(run_dir / "videos"), "--video-frames", "0")) == 2
    assert "--video-frames must be positive" in capsys.readouterr().err
    assert {p: p.read_bytes() if p.is_file() else None for p in run_dir.rglob("*")} == before


def test_missing_library_names_the_extra(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    assert evaluate_main(evaluate_args(run_dir, "--video", str(tmp_path / "videos"))) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[video]'" in err and "Traceback" not in err
    assert not (tmp_path / "videos").exists()
