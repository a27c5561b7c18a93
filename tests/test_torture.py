"""Kill-and-resume torture: SIGKILL a multi-game run at a dozen moments (while a checkpoint or
a milestone is written, during evaluations, during the Fisher estimate, right after a switch
checkpoint, while the checkpoint after a SIGTERM's is written, at random), resume it each time,
and compare it with an uninterrupted run.

With checkpoint.every=0 every checkpoint is taken at a switch, before the first step, or on a
stop signal during a switch's evaluation or Fisher estimate: from each of them docs/long-runs.md
promises an exact resume, so the final networks, eval.csv and every TensorBoard point (value
included) must equal the uninterrupted run's.
"""

import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
from test_train import SMOKE, scalars

from agent.checkpoint import list_checkpoints, load_latest

ROOT = Path(__file__).resolve().parent.parent
VISIT = 240
ARGS = ["--config", SMOKE, "schedule.games=[Breakout, Pong]", "schedule.cycles=2",
        f"schedule.steps_per_visit={VISIT}", "env.num_envs=4", "dqn.learning_starts=64", "dqn.train_every=16",
        "dqn.target_update_every=100", "replay.capacity_per_game=4096", "consolidation.fisher_batches=3",
        "consolidation.probe_states=32", "consolidation.probe_every=120", "checkpoint.every=0", "checkpoint.keep=2",
        "eval.episodes=1", "eval.num_envs=1", "eval.epsilon=0.05", "eval.max_episode_frames=600",
        "logging.log_every=40", "logging.progress_bar=false", "torch_threads=1"]
EVALUATING = "evaluating 2 game(s) x 1 episode(s) at step"
# When to kill: as soon as a line of the run's output appears (lines announce the work that follows
# them, so the kill lands inside it whatever the machine's speed), or a file appears in the run
# directory (polled; a write that finishes between two polls is caught at the next one);
# "term" stops the run with SIGTERM instead of SIGKILL; "random" after a seeded random delay.
MOMENTS = [
    ("line", f"{EVALUATING} 0"),
    ("line", f"[step {VISIT}] consolidating Breakout"),
    ("file", "checkpoints/*.pt.tmp"),
    ("line", "training Pong (visit 2/4)"),
    ("line", f"{EVALUATING} {2 * VISIT}"),
    ("file", "milestones/*.pt.tmp"),
    ("file", f"checkpoints/step-{2 * VISIT:012d}.done"),  # right after a switch checkpoint
    ("line", "training Breakout (visit 3/4)"),
    ("line", "scores:"),  # just after an evaluation's rows were written
    ("line", f"[step {3 * VISIT}] consolidating Breakout"),
    # SIGTERM during a Fisher estimate: a checkpoint just before the switch; then SIGKILL while the
    # resumed run writes the switch's own checkpoint at the same step.
    ("term", f"[step {3 * VISIT}] consolidating Breakout"),
    ("file", "checkpoints/*.pt.tmp"),
    ("random", None),
    ("file", "checkpoints/*.pt.tmp"),
]


def _train(args, log):
    """A training process whose output goes to `log` (started by the forkserver: no import delay)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout, sys.stderr = open(1, "w", buffering=1), open(2, "w", buffering=1)
    from agent.cli import train_main

    code = train_main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Launcher:
    """Starts runs from a forkserver that imported the project once: a kill-and-resume costs
    milliseconds instead of seconds of imports, and the forkserver never ran torch code, so its
    children's thread pools are clean."""

    def __init__(self, log: Path):
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["agent.cli", "agent.trainer"])
        self.log, self.read = log, 0

    def start(self, args):
        return self.context.Process(target=_train, args=(args, str(self.log)), daemon=True)

    def new_lines(self) -> list[str]:
        if not self.log.exists():
            return []
        with open(self.log) as handle:
            handle.seek(self.read)
            text = handle.read()
        complete = text[:text.rfind("\n") + 1]
        self.read += len(complete.encode())
        return complete.splitlines()


def run_until(launcher, proc, moment, run_dir, rng):
    """Kill `proc` at `moment`; returns True if it was killed, False if it finished first."""
    kind, what = moment
    if kind == "term":
        kind, sig, expected = "line", signal.SIGTERM, 3
    else:
        sig, expected = signal.SIGKILL, -signal.SIGKILL
    kill_at = time.monotonic() + rng.uniform(0.5, 6.0) if kind == "random" else None
    while proc.is_alive():
        lines = launcher.new_lines()
        if kill_at is None and (kind == "line" and any(what in line for line in lines)
                                or kind == "file" and any(run_dir.glob(what))):
            kill_at = time.monotonic()
        if kill_at is not None and time.monotonic() >= kill_at:
            os.kill(proc.pid, sig)
            proc.join()
            assert proc.exitcode == expected, launcher.log.read_text()
            return True
        time.sleep(0.001)
    return False


def test_kill_and_resume_at_a_dozen_moments_equals_an_uninterrupted_run(tmp_path):
    straight, tortured = tmp_path / "straight", tmp_path / "tortured"
    launcher = Launcher(tmp_path / "output.log")
    proc = launcher.start([*ARGS, "--run-dir", str(straight)])
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == 0, launcher.log.read_text()
    launcher.new_lines()  # the uninterrupted run's output is not a cue

    rng, kills = random.Random(0), []
    proc = launcher.start([*ARGS, "--run-dir", str(tortured)])
    proc.start()
    for moment in MOMENTS:
        if not run_until(launcher, proc, moment, tortured, rng):
            break
        step = load_latest(tortured / "checkpoints")[1]["progress"]["global_step"] \
            if list_checkpoints(tortured / "checkpoints") else None
        kills.append((*moment, step))
        proc = launcher.start(["--resume", str(tortured)])
        proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == 0, launcher.log.read_text()
    assert len(kills) >= 10, kills
    print("killed at (moment, resumed from step):", *kills, sep="\n  ")

    # The schedule is complete and the networks are exactly the uninterrupted run's.
    a, b = (load_latest(run / "checkpoints")[1] for run in (straight, tortured))
    assert b["progress"]["global_step"] == 4 * VISIT and b["progress"]["visit"] == 4
    for part in ("online", "target"):
        assert all(torch.equal(a["learner"][part][k], b["learner"][part][k]) for k in a["learner"][part])
    assert [p.name for p in list_checkpoints(straight / "milestones")] == \
        [p.name for p in list_checkpoints(tortured / "milestones")]
    # eval.csv: the same rows, once each, in the same order.
    assert (tortured / "eval.csv").read_text() == (straight / "eval.csv").read_text()
    # TensorBoard: the same points with the same values, each once (timings aside).
    timing = ("charts/sps", "ewc/consolidation_seconds")
    expected, got = scalars(straight), scalars(tortured)
    assert expected.keys() == got.keys()
    for tag in expected:
        steps = [step for step, _ in got[tag]]
        assert len(steps) == len(set(steps)), f"{tag}: duplicated points"
        if tag in timing:
            assert sorted(steps) == sorted(step for step, _ in expected[tag]), tag
        else:
            assert sorted(got[tag]) == sorted(expected[tag]), tag
