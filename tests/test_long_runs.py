"""What long runs need: valid seeds at any step, resume on another device, a record that
no evaluation or resume damages, stop signals acted on within seconds, clear progress."""

import csv
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scripts_helper import report_main
from test_train import SMOKE, TINY, scalars

import agent.trainer as trainer_module
from agent import rundir
from agent.checkpoint import list_checkpoints, load_latest
from agent.cli import evaluate_main, train_main
from agent.config import load_config
from agent.console import Console
from agent.evaluation import play_episodes
from agent.networks import QNetwork
from agent.record import RunRecord
from agent.replay import FrameReplay
from agent.resume import resume
from envs import derive_seed

ROOT = Path(__file__).resolve().parent.parent
TWO_GAMES = ["schedule.games=[Breakout, Pong]", "eval.episodes=1", "eval.num_envs=1", "eval.epsilon=1.0",
             "eval.max_episode_frames=400"]


def points(run_dir):
    """{(tag, step): count} over every scalar event file of the run."""
    counts = {}
    for tag, values in scalars(run_dir).items():
        for step, _ in values:
            counts[(tag, step)] = counts.get((tag, step), 0) + 1
    return counts


def test_seeds_are_valid_for_ale_at_any_step():
    # The old evaluation seed, seed + 7919 * (step + 1), passed 2^31 after 271k steps.
    seeds = [derive_seed(0, step, 7919) for step in (0, 271_200, 10**9, 10**15)] + [derive_seed(2**64, 3)]
    # ale-py seeds env i with seed + i: room for any number of envs the config allows.
    assert all(0 <= seed and seed + 4096 < 2**31 for seed in seeds) and len(set(seeds)) == len(seeds)
    network = QNetwork(18)
    played = play_episodes(network, "Pong", 1, epsilon=1.0, seed=7919 * 10**12, num_envs=1,
                           settings=load_config(SMOKE).env.atari_settings(200))
    assert len(played["returns"]) == 1


def test_an_evaluation_far_into_a_run_works(tmp_path):
    """The evaluation the trainer runs at 30M agent steps (it crashed at 271k)."""
    config = load_config(SMOKE, [*TINY, *TWO_GAMES, "eval.max_episode_frames=100"])
    trainer = trainer_module.Trainer(config, tmp_path / "run")
    trainer.progress.global_step = 30_000_000
    trainer.progress.eval_due = True
    (tmp_path / "run").mkdir()
    trainer.record = RunRecord(tmp_path / "run", Console(1, 0, bar=False, stream=io.StringIO()))
    trainer.record.open({}, first_file=False)
    trainer._evaluate_if_due()
    trainer.record.close()
    rows = list(csv.DictReader(open(tmp_path / "run" / "eval.csv")))
    assert [(r["step"], r["game"]) for r in rows] == [("30000000", "Breakout"), ("30000000", "Pong")]


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_resume_puts_every_restored_tensor_on_the_training_device(tmp_path, monkeypatch):
    """A run with anchors, resumed on another device (here the meta device stands in for CUDA,
    which this machine lacks: mixing it with CPU tensors fails the same way)."""
    run = tmp_path / "run"
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, "schedule.games=[Breakout, Pong]",
                       "schedule.steps_per_visit=80", "dqn.learning_starts=8"]) == 0
    monkeypatch.setattr(trainer_module, "resolve_device", lambda name: torch.device("meta"))
    trainer = resume(run)
    anchors = trainer.consolidator.anchors
    assert list(anchors) == ["Breakout", "Pong"]
    assert all(t.device.type == "meta" for a in anchors.values() for part in a.values() for t in part.values())
    assert all(s.device.type == "meta" for group in trainer.learner.optimizer.state.values() for s in group.values()
               if torch.is_tensor(s) and s.dim() > 0)
    penalty = trainer.consolidator.penalty(trainer.network, current_game="Breakout")
    assert penalty.device.type == "meta"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, *TWO_GAMES]) == 0
    return run


def test_evaluate_refuses_to_write_into_the_runs_record(finished_run, capsys):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    for output in ("eval.json", "eval.csv", "config.yaml", "tb/x.json", "checkpoints/x.json"):
        assert evaluate_main(["--checkpoint", str(finished_run), "--episodes", "1",
                              "--output", str(finished_run / output)]) == 2
        err = capsys.readouterr().err
        assert "belongs to the record of the run" in err and "evaluations" in err, err
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before


def test_evaluate_beside_the_record_then_resume_and_report(finished_run, tmp_path, capsys):
    before_csv = (finished_run / "eval.csv").read_bytes()
    before_points = points(finished_run)
    before_config = (finished_run / "config.yaml").read_bytes()
    output = finished_run / "evaluations" / "final.json"
    assert evaluate_main(["--checkpoint", str(finished_run), "--episodes", "1", "--num-envs", "1",
                          "--max-episode-frames", "200", "--output", str(output)]) == 0
    assert output.exists() and output.with_suffix(".csv").exists()
    # Resuming a finished run changes nothing at all.
    assert train_main(["--resume", str(finished_run)]) == 0
    assert "already finished" in capsys.readouterr().err
    assert (finished_run / "eval.csv").read_bytes() == before_csv
    assert (finished_run / "config.yaml").read_bytes() == before_config
    assert points(finished_run) == before_points
    assert ("eval/Pong/return", 480) in before_points and set(before_points.values()) == {1}
    assert report_main([str(finished_run), "--out", str(tmp_path / "report")]) == 0


def test_resuming_from_a_switch_is_exact_and_keeps_that_steps_points(tmp_path):
    """Stopping at the switch (the budget was one cycle) and resuming for a second cycle equals one
    long run, bit for bit. The end-of-visit evaluation and the Fisher statistics are logged at the
    switch's step, before its checkpoint: the resume neither drops nor repeats them."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = ["--config", SMOKE, *TINY, *TWO_GAMES]
    assert train_main([*args, "--run-dir", str(straight), "schedule.cycles=2"]) == 0
    assert train_main([*args, "--run-dir", str(split), "schedule.cycles=1"]) == 0
    assert train_main(["--resume", str(split), "schedule.cycles=2"]) == 0
    a, b = (load_latest(run / "checkpoints")[1]["learner"]["online"] for run in (straight, split))
    assert all(torch.equal(a[name], b[name]) for name in a)  # bit-identical
    expected = {key for key in points(straight) if key[0] not in ("hyperparameters",)}
    assert points(split).keys() == expected
    assert set(points(split).values()) == {1}
    assert ("ewc/Breakout/fisher_mean", 240) in expected and ("eval/Breakout/return", 480) in expected
    assert (split / "eval.csv").read_bytes() == (straight / "eval.csv").read_bytes()
    # The config changed on resume: the old one is kept beside the new one, and never overwritten.
    assert "cycles: 1" in (split / "config-until-step-000000000480.yaml").read_text()
    assert "cycles: 2" in (split / "config.yaml").read_text()
    rundir.write_config(split, {"schedule": "another"}, 480)
    assert "cycles: 1" in (split / "config-until-step-000000000480.yaml").read_text()
    assert "cycles: 2" in (split / "config-until-step-000000000480.1.yaml").read_text()


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", SMOKE, "--run-dir", str(run), *TINY, "schedule.games=[Pong]", "schedule.steps_per_visit=64"]
    assert train_main([*args, "--print-config"]) == 0
    run.mkdir()
    (run / "config.yaml").write_text(capsys.readouterr().out)  # what the run had written when it was killed
    (run / "checkpoints").mkdir()
    assert train_main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_main(["--resume", str(run)]) == 0
    assert "starting it over" in capsys.readouterr().err
    assert load_latest(run / "checkpoints")[1]["progress"]["global_step"] == 64


def test_a_partly_written_replay_checkpoints_only_its_written_slots():
    replay = FrameReplay(capacity=8000, num_envs=4)
    frames = np.zeros((4, 4, 84, 84), dtype=np.uint8)
    for _ in range(50):
        replay.add(frames, np.zeros(4), np.zeros(4), np.zeros(4, bool), np.zeros(4, bool), frames)
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    used = int(replay.written.max()) * 4
    slot_bytes = 84 * 84 + 5 + 3
    assert used * slot_bytes <= buffer.tell() <= used * slot_bytes + 20_000  # not 8000 slots' worth


def stop_when(cmd, marker, sig=signal.SIGTERM, timeout=180):
    """Run `cmd` and send `sig` as soon as `marker` appears in its output; (exit code, output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, deadline = [], time.monotonic() + timeout  # a hang guard, not a threshold
    try:
        for line in proc.stdout:
            output.append(line)
            assert time.monotonic() < deadline, "".join(output)
            if marker in line:
                proc.send_signal(sig)
                break
        rest = proc.communicate(timeout=timeout)[0]
        return proc.returncode, "".join(output) + rest
    finally:
        proc.kill()


@pytest.mark.parametrize("phase", ["evaluation", "fisher"])
def test_a_stop_signal_is_acted_on_within_the_work(tmp_path, phase):
    """Both would take minutes: 300 evaluation episodes, or the expected Fisher over 400 minibatches. The
    signal comes as the work starts (its line printed); the run stops with the work abandoned and owed,
    which a run that finished the work first would not show. How fast it stops is measured by
    `scripts/bench.py --only signals` (docs/long-runs.md, "Stop signals"), not asserted here."""
    run = tmp_path / "run"
    long_work = {"evaluation": ["eval.episodes=300", "eval.num_envs=1", "eval.epsilon=1.0"],
                 "fisher": ["eval.episodes=0", "consolidation.fisher_batches=400"]}[phase]
    marker = {"evaluation": "evaluating 1 game(s)", "fisher": "consolidating Breakout"}[phase]
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", SMOKE, "--run-dir", str(run), *TINY,
           "schedule.games=[Breakout]", "schedule.steps_per_visit=64", "dqn.learning_starts=8", *long_work]
    code, output = stop_when(cmd, marker)
    assert code == 3, output
    assert "Stopped by signal" in output and "--resume" in output
    state = load_latest(run / "checkpoints")[1]
    # The abandoned work is owed: the resumed run redoes it.
    assert state["progress"]["visit"] == 0 and state["progress"]["step_in_visit"] == \
        (0 if phase == "evaluation" else 64)
    assert state["progress"]["eval_due"] == (phase == "evaluation")
    assert not (run / "eval.csv").exists()
    assert not state["consolidator"]["anchors"]


def test_plain_progress_lines_and_an_end_of_run_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, *TWO_GAMES]) == 0
    err = capsys.readouterr().err
    assert "training Breakout (visit 1/2)" in err and "training Pong (visit 2/2)" in err
    assert "evaluating 2 game(s) x 1 episode(s) at step 0" in err and "scores: Breakout" in err
    assert "Finished 480 agent steps (2 visits" in err and "Final evaluation (mean return): Breakout" in err
    assert str(run) in err.split("Finished")[1]


def test_the_bar_shows_the_current_games_returns():
    console = Console(100, 0, bar=False, stream=io.StringIO(), interval=0)
    console.visit("Breakout", 0, 2)
    console.advance(10, {"return": "12.0"})
    console.visit("Pong", 1, 2)
    console.advance(10)
    assert "return 12.0" not in console.stream.getvalue().splitlines()[-1]


def test_checkpoints_keep_the_newest_and_milestones_every_switch(tmp_path):
    run = tmp_path / "run"
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, *TWO_GAMES, "schedule.cycles=2",
                       "checkpoint.keep=1"]) == 0
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-000000000960.pt"]
    assert [int(p.stem.split("-")[1]) for p in list_checkpoints(run / "milestones")] == [240, 480, 720, 960]
    assert evaluate_main(["--checkpoint", str(run / "milestones" / "step-000000000240.pt"), "--episodes", "1",
                          "--num-envs", "1", "--max-episode-frames", "100"]) == 0


def test_resuming_with_a_shorter_visit_still_evaluates_and_switches(tmp_path):
    """Killed at step 200 of a 240-step visit (its last checkpoint at 160), resumed with
    schedule.steps_per_visit=100: the visit is over, and its evaluation and switch still happen."""
    run = tmp_path / "run"
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, *TWO_GAMES, "schedule.games=[Pong]",
                       "checkpoint.every=80", "checkpoint.keep=5", "dqn.learning_starts=16"]) == 0
    for path in [*(run / "checkpoints").glob("step-000000000240.*"), *(run / "milestones").glob("*")]:
        path.unlink()  # as if killed before the visit ended
    assert train_main(["--resume", str(run), "schedule.steps_per_visit=100"]) == 0
    rows = list(csv.DictReader(open(run / "eval.csv")))
    assert [(r["step"], r["game"]) for r in rows] == [("0", "Pong"), ("160", "Pong")]
    state = load_latest(run / "checkpoints")[1]
    assert state["progress"]["visit"] == 1 and state["progress"]["global_step"] == 160
    assert [p.name for p in list_checkpoints(run / "milestones")] == ["step-000000000160.pt"]
