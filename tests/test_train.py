"""Tiny end-to-end runs on real games: TensorBoard tags, both games visited, refusals, resume."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agent.checkpoint import list_checkpoints, load_latest, step_of
from agent.cli import train_main

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = ["schedule.steps_per_visit=240", "env.num_envs=2", "dqn.learning_starts=64", "dqn.target_update_every=100",
        "replay.capacity_per_game=512", "consolidation.fisher_batches=2", "consolidation.probe_states=16",
        "consolidation.probe_every=100", "logging.log_every=40", "logging.progress_bar=false", "torch_threads=1",
        "eval.episodes=0"]


def tiny_run(run_dir, games: str, steps: int):
    """A finished run of a few seconds (no update is made: learning starts after the visit)."""
    assert train_main(["--config", SMOKE, "--run-dir", str(run_dir), *TINY, f"schedule.games=[{games}]",
                       f"schedule.steps_per_visit={steps}", f"dqn.learning_starts={steps}"]) == 0
    return run_dir


def start_a_long_run(run_dir):
    """A training process on Pong that would run for hours, returned once a checkpoint after step 0 is
    complete (an event, not a sleep; the deadline only guards a hang)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", SMOKE, "--run-dir", str(run_dir), *TINY,
           "schedule.steps_per_visit=100000", "schedule.games=[Pong]", "checkpoint.every=100", "checkpoint.keep=100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not [p for p in list_checkpoints(run_dir / "checkpoints") if step_of(p) > 0]:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"training did not start: {proc.communicate()[0]}")
        time.sleep(0.05)
    return proc


def scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def final_params(run_dir):
    _, state = load_latest(run_dir / "checkpoints")
    return state["learner"]["online"]


def test_smoke_run_visits_both_games_and_logs_the_tags(tmp_path):
    run = tmp_path / "run"
    # Random play (epsilon stays high) ends Breakout episodes within ~200 steps per env.
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, "schedule.games=[Breakout, Pong]",
                       "schedule.steps_per_visit=800", "epsilon.decay_steps=100000", "eval.episodes=1",
                       "eval.num_envs=1", "eval.epsilon=1.0", "eval.max_episode_frames=1000"]) == 0
    tags = scalars(run)
    for tag in ("eval/Breakout/return", "eval/Pong/return", "eval/mean_human_normalized"):
        assert [step for step, _ in tags[tag]] == [0, 800, 1600], tag
    rows = (run / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,visit,trained_game,game,mean_return,std_return,episodes,human_normalized"
    assert len(rows) == 1 + 3 * 2
    for tag in ("charts/sps", "charts/epsilon", "charts/game_index", "losses/td_loss", "losses/q_values",
                "losses/ewc_penalty", "ewc/num_anchors", "charts/Breakout/episodic_return",
                "charts/Breakout/episodic_length", "retention/Breakout/agreement", "retention/Breakout/q_drift",
                "ewc/Breakout/fisher_mean"):
        assert tag in tags, tag
    assert {value for _, value in tags["charts/game_index"]} == {0.0, 1.0}
    assert max(value for _, value in tags["losses/ewc_penalty"]) > 0  # Pong is trained under Breakout's anchor
    _, state = load_latest(run / "checkpoints")
    assert state["progress"]["game_steps"] == {"Breakout": 800, "Pong": 800}
    assert list(state["consolidator"]["anchors"]) == ["Breakout", "Pong"]


def test_refuses_a_run_directory_that_holds_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", SMOKE, "--run-dir", str(run), *TINY, "schedule.games=[Pong]", "schedule.steps_per_visit=8",
            "dqn.learning_starts=8"]
    assert train_main(args) == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert train_main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert train_main(["--config", SMOKE, "--run-dir", str(tmp_path / "r"), "schedule.games=[Pongg]"]) == 2
    err = capsys.readouterr().err
    assert "Unknown Atari game 'Pongg'" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_resume_refuses_changes_to_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, "schedule.games=[Pong]",
                       "schedule.steps_per_visit=8", "dqn.learning_starts=8"]) == 0
    assert train_main(["--resume", str(run), "network.architecture=large", "schedule.games=[Pong, Breakout]"]) == 2
    err = capsys.readouterr().err
    assert "network.architecture: checkpoint 'nature', now 'large'" in err
    assert "schedule.games" in err


def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path):
    """SIGTERM once training is under way (a periodic checkpoint after step 0 exists: an event, not a
    sleep): exit 3, a checkpoint at the step the run stopped, and the resumed run finishes from it."""
    run = tmp_path / "run"
    proc = start_a_long_run(run)
    try:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 3, output
    assert "checkpoint written" in output
    stopped_at = load_latest(run / "checkpoints")[1]["progress"]["global_step"]
    assert stopped_at >= 100 and f"at step {stopped_at:,}" in output
    assert step_of(list_checkpoints(run / "checkpoints")[-1]) == stopped_at  # the signal's own checkpoint
    assert train_main(["--resume", str(run), "schedule.steps_per_visit=" + str(stopped_at + 40)]) == 0
    assert load_latest(run / "checkpoints")[1]["progress"]["global_step"] == stopped_at + 40


def test_sigkill_during_a_checkpoint_write_resumes_from_the_last_complete_one(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", SMOKE, "--run-dir", str(run), *TINY,
           "schedule.games=[Pong]", "schedule.steps_per_visit=100000", "checkpoint.every=200",
           "replay.capacity_per_game=20000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        # Wait for one complete checkpoint after the first step, then for the next one to be half written.
        while not [p for p in list_checkpoints(run / "checkpoints") if p.name != "step-000000000000.pt"]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        while not any(p.stat().st_size > 0 for p in (run / "checkpoints").glob("*.tmp")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    complete = list_checkpoints(run / "checkpoints")
    last_step = load_latest(run / "checkpoints")[1]["progress"]["global_step"]
    assert last_step == int(complete[-1].stem.split("-")[1])
    assert train_main(["--resume", str(run), f"schedule.steps_per_visit={last_step + 40}"]) == 0
    assert load_latest(run / "checkpoints")[1]["progress"]["global_step"] == last_step + 40


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from agent.dqn import DQNLearner

    run = tmp_path / "run"
    args = ["--config", SMOKE, "--run-dir", str(run), *TINY, "schedule.games=[Pong]", "schedule.steps_per_visit=80"]
    assert train_main(args) == 0
    good = load_latest(run / "checkpoints")[1]["learner"]["online"]
    monkeypatch.setattr(DQNLearner, "td_loss", lambda self, batch: (torch.tensor(float("nan"), requires_grad=True),
                                                                    torch.tensor(float("nan"))))
    assert train_main(["--resume", str(run), "schedule.cycles=2"]) == 4
    err = capsys.readouterr().err
    assert "Non-finite loss" in err and "last good checkpoint" in err and "learning_rate" in err
    path, state = load_latest(run / "checkpoints")
    assert state["progress"]["global_step"] == 80
    assert all(torch.equal(good[k], state["learner"]["online"][k]) for k in good)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   # what torch.save raises when the disk fills up inside its zip writer
                                   RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_during_training_stops_cleanly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys,
                                                                                     error):
    import agent.checkpoint as checkpoint

    run = tmp_path / "run"
    args = ["--config", SMOKE, "--run-dir", str(run), *TINY, "schedule.games=[Pong]", "schedule.steps_per_visit=40",
            "dqn.learning_starts=40"]
    assert train_main(args) == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())

    def full_disk(obj, writer):
        writer.write(b"partial")
        raise error

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    assert train_main(["--resume", str(run), "schedule.cycles=2"]) == 5
    err = capsys.readouterr().err
    assert str(error).split(":")[-1].strip() in err and "--resume" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_precision_auto_is_recorded_as_chosen_and_kept_on_resume(tmp_path, monkeypatch):
    """config.yaml and the checkpoint say which precision ran; a resume keeps it whatever this CPU offers."""
    import yaml

    import agent.dqn
    monkeypatch.setattr(agent.dqn, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    run = tiny_run(tmp_path / "run", "Breakout", 40)
    assert yaml.safe_load((run / "config.yaml").read_text())["dqn"]["precision"] == "bf16"
    assert load_latest(run / "checkpoints")[1]["config"]["dqn"]["precision"] == "bf16"
    monkeypatch.setattr(agent.dqn, "cpu_flags", lambda: {"avx512f"})  # the run moves to a CPU without bf16
    assert train_main(["--resume", str(run), "--config", SMOKE, *TINY, "schedule.games=[Breakout]",
                       "schedule.steps_per_visit=80", "dqn.learning_starts=40"]) == 0
    assert load_latest(run / "checkpoints")[1]["config"]["dqn"]["precision"] == "bf16"
    fresh = tiny_run(tmp_path / "fresh", "Breakout", 40)
    assert yaml.safe_load((fresh / "config.yaml").read_text())["dqn"]["precision"] == "fp32"
