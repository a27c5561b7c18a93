"""Sweeps on a local Ray: a grid of tiny runs finishes, a killed sweep resumes without redoing finished
runs, a worker that dies is retried from the run's checkpoint, SIGTERM stops a sweep with checkpoints, a failed
run is reported with its error; the grid's expansion, the record's history and bad input without Ray."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from agent import sweep as sweeps
from agent import sweep_grid
from agent.checkpoint import list_checkpoints, load_latest
from agent.cli import sweep_main

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.yaml"
# One game, a few hundred steps (schedule.steps_per_visit is set by each test): seconds per run.
TINY = ["schedule.games=[Pong]", "env.num_envs=2", "dqn.learning_starts=64", "dqn.target_update_every=100",
        "replay.capacity_per_game=512", "consolidation.fisher_batches=2", "consolidation.probe_states=16",
        "consolidation.probe_every=100", "logging.log_every=40", "eval.episodes=0"]
# No update at all (learning would start after the visit): the cheapest complete run.
NO_UPDATES = [*TINY, "schedule.steps_per_visit=240", "dqn.learning_starts=240"]
# A run of a few seconds that checkpoints often: long enough to be killed in the middle.
LONGER = {"schedule.steps_per_visit": 1600, "dqn.train_every": 32, "checkpoint.every": 200}


def write_sweep(tmp_path, grid, **extra) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(SMOKE), "grid": grid, "resources": {"num_cpus": 1}, **extra}))
    return path


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the in-process sweeps of this file (sweep_main uses it as it finds it)."""
    assert sweeps.connect(None, local_cpus=2)
    yield
    ray.shutdown()


def sweep_process(sweep_file, out, *args) -> subprocess.Popen:
    """The sweep as a user runs it, with its own local Ray."""
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(sweep_file), "--out", str(out),
                             "--local-cpus", "2", "--progress-every", "1", *args, *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert proc is None or proc.poll() is None, f"the sweep ended before {what}:\n{proc.communicate()[0]}"
        time.sleep(0.1)


def newest_step(run_dir) -> int:
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    return int(checkpoints[-1].stem.split("-")[1].split(".")[0]) if checkpoints else -1


def last_pid(log) -> int:
    """The process of the latest attempt of a run, from the run's log."""
    return int(log.read_text().rsplit(", pid ", 1)[1].split()[0])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def attempts_started_at(log) -> list[int]:
    """The step at which each attempt of a run started training, from the run's log."""
    return [int(line.split()[1].split("/")[0].replace(",", "")) for line in log.read_text().splitlines()
            if line.startswith("[step ") and "training Pong" in line]


def files_and_mtimes(run_dir) -> dict:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_a_two_run_sweep_trains_both_runs_to_the_end(tmp_path, local_ray, capsys):
    out = tmp_path / "out"
    assert sweep_main([str(write_sweep(tmp_path, {"seed": [0, 1]})), "--out", str(out), "--progress-every", "1",
                       *NO_UPDATES]) == 0
    err = capsys.readouterr().err
    assert "2/2 done, 0 running, 0 waiting, 0 failed" in err and "| 480 steps this session" in err
    for name in ("seed=0", "seed=1"):
        run = out / name
        _, state = load_latest(run / "checkpoints")
        assert state["progress"]["global_step"] == 240 and state["progress"]["visit"] == 1, name
        assert state["config"]["seed"] == int(name[-1]) and state["config"]["torch_threads"] == 1
        assert list_checkpoints(run / "milestones") and (run / "config.yaml").is_file() and list((run / "tb").iterdir())
        assert "exit 0" in (out / "logs" / f"{name}.log").read_text()
    record = json.loads((out / "sweep.json").read_text())
    assert [run["name"] for run in record["runs"]] == ["seed=0", "seed=1"]
    assert record["runs"][1]["settings"] == {"seed": 1}
    assert {name: r["status"] for name, r in record["sessions"][0]["results"].items()} == \
        {"seed=0": "done", "seed=1": "done"}


def test_a_failed_run_is_reported_with_its_error(tmp_path, local_ray, capsys):
    out = tmp_path / "out"
    # Valid in the config schema, refused when the run starts on a worker: a GPU that is not there.
    assert sweep_main([str(write_sweep(tmp_path, {"device": ["cpu", "cuda:99"]})), "--out", str(out),
                       *NO_UPDATES]) == 1
    err = capsys.readouterr().err
    assert "run device=cuda_99 failed: ConfigError: device=cuda:99 was asked for but CUDA is not available" in err \
        or "run device=cuda_99 failed: RuntimeError" in err, err  # a GPU machine: no device 99
    assert "| device=cuda_99 | failed |" in err and "| device=cpu | done | 240 |" in err
    result = json.loads((out / "sweep.json").read_text())["sessions"][0]["results"]["device=cuda_99"]
    assert result["status"] == "failed" and "cuda:99" in result["error"]
    assert "Traceback" in (out / "logs" / "device=cuda_99.log").read_text()


def test_a_killed_sweep_resumes_unfinished_runs_and_skips_finished_ones(tmp_path, local_ray, capsys):
    out = tmp_path / "out"
    sweep_file = write_sweep(tmp_path, {"seed": [0, 1]}, overrides=LONGER)
    runs = {run.name: run.config for run in sweep_grid.load_sweep(sweep_file, TINY).runs}

    def one_finished_one_checkpointed():
        finished = [name for name, config in runs.items() if sweeps.finished_steps(out / name, config)]
        return len(finished) == 1 and newest_step(out / next(n for n in runs if n not in finished)) > 0

    proc = sweep_process(sweep_file, out, "--local-cpus", "1")  # one run at a time
    try:
        wait_for(one_finished_one_checkpointed, "one run to finish and the other to checkpoint", proc, timeout=240)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    finished = next(out / name for name, config in runs.items() if sweeps.finished_steps(out / name, config))
    unfinished = next(out / name for name in runs if out / name != finished)
    # The local Ray dies with the sweep; its worker follows within seconds (a rerun would wait for it).
    worker = last_pid(out / "logs" / f"{unfinished.name}.log")
    wait_for(lambda: not alive(worker), "the worker to die with the sweep", timeout=60)
    before = files_and_mtimes(finished)

    assert sweep_main([str(sweep_file), "--out", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert "2 runs, 1 finished earlier, 1 to train" in err
    assert files_and_mtimes(finished) == before  # not retrained, not even opened for writing
    assert load_latest(unfinished / "checkpoints")[1]["progress"]["global_step"] == 1600
    resumed_at = attempts_started_at(out / "logs" / f"{unfinished.name}.log")[1]
    assert resumed_at > 0  # resumed, not started over
    # This session's steps: the resumed run's, from its checkpoint on.
    assert "2/2 done, 0 running, 0 waiting, 0 failed" in err and f"| {1600 - resumed_at:,} steps this session" in err
    sessions = json.loads((out / "sweep.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["added"] == []
    assert sessions[1]["results"][finished.name]["status"] == "finished earlier"
    assert sessions[1]["results"][unfinished.name]["status"] == "done"


def test_a_dead_worker_is_retried_from_its_checkpoint_and_sigterm_stops_the_sweep_cleanly(tmp_path):
    out = tmp_path / "out"
    endless = {**LONGER, "schedule.steps_per_visit": 1_000_000}
    sweep_file = write_sweep(tmp_path, {"seed": [0]}, overrides=endless, max_retries=1)
    run, log = out / "seed=0", out / "logs" / "seed=0.log"
    proc = sweep_process(sweep_file, out)
    try:
        wait_for(lambda: newest_step(run) > 0, "a checkpoint", proc)
        first = last_pid(log)
        subprocess.run(["kill", "-KILL", str(first)], check=True)
        wait_for(lambda: len(attempts_started_at(log)) == 2, "Ray to retry the run", proc)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 3, output
    assert last_pid(log) != first
    assert attempts_started_at(log)[1] > 0  # the retry resumed from the checkpoint
    # The sweep cancelled the run: the trainer checkpointed where it stopped and exited 3.
    stopped = load_latest(run / "checkpoints")[1]["progress"]["global_step"]
    assert f"Stopped by signal SIGINT at step {stopped:,}; checkpoint written" in log.read_text()
    assert "| seed=0 | interrupted |" in output
    assert "1 run(s) interrupted (those that had started wrote a checkpoint)" in output
    assert "run(s) failed" not in output
    assert json.loads((out / "sweep.json").read_text())["sessions"][0]["results"]["seed=0"]["code"] == 3


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"consolidation.lamda": [1, 10]}}, "consolidation.lamda: unknown key. Did you mean lambda?"),
    ({"grid": {"seed": 3}}, "grid.seed must be a non-empty list"),
    ({"base": "missing.yaml", "grid": {"seed": [0]}}, "base config"),
    ({"grid": {"seed": [0]}, "resource": {"num_cpus": 1}}, "unknown key(s) resource"),
    ({"grid": {}}, "the grid is empty"),
    ({"overrides": {"seed": 1}}, "the grid is empty"),
])
def test_bad_sweep_files_are_refused_with_the_fix(tmp_path, capsys, spec, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(SMOKE), **spec}))
    assert sweep_main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address, message", [("no-such-host:6379", "Cannot reach a Ray cluster"),
                                              ("127.0.0.1:1", "ray start --head --port=1"),
                                              ("6379", "is not a Ray address")])
def test_a_bad_address_is_refused_with_the_fix(tmp_path, capsys, address, message):
    assert sweep_main([str(write_sweep(tmp_path, {"seed": [0]})), "--out", str(tmp_path / "out"),
                       "--address", address]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_grown_grid_appends_runs_and_a_changed_one_is_refused(tmp_path):
    out = tmp_path / "out"
    first = sweep_grid.load_sweep(write_sweep(tmp_path, {"seed": [0, 1]}), TINY)
    sweep_grid.write_record(out, first, ["ewc-sweep"], None)
    grown = sweep_grid.load_sweep(write_sweep(tmp_path, {"seed": [0, 1, 2]}), [*TINY, "schedule.cycles=2"])
    sweep_grid.write_record(out, grown, ["ewc-sweep"], None)  # cycles may change on resume: allowed
    record = json.loads((out / "sweep.json").read_text())
    assert [run["name"] for run in record["runs"]] == ["seed=0", "seed=1", "seed=2"]
    assert [session["added"] for session in record["sessions"]] == [["seed=0", "seed=1"], ["seed=2"]]
    with pytest.raises(sweep_grid.SweepError) as refused:
        sweep_grid.write_record(out, sweep_grid.load_sweep(write_sweep(tmp_path, {"seed": [1, 2, 3]}),
                                                   [*TINY, "network.architecture=large"]), ["ewc-sweep"], None)
    message = str(refused.value)
    assert "seed=0: recorded, but no longer in the grid" in message
    assert "seed=1: network.architecture changed" in message and "another --out" in message
    assert json.loads((out / "sweep.json").read_text()) == record  # nothing written


def test_the_grid_expands_into_named_runs_with_their_share_of_the_machine(tmp_path):
    sweep = sweep_grid.load_sweep(write_sweep(tmp_path, {"games": [["Breakout", "Pong"], ["Pong", "Breakout"]],
                                                     "lambda": [1, 10]}, resources={"num_cpus": 2}), [])
    assert [run.name for run in sweep.runs] == ["games=Breakout-Pong,lambda=1", "games=Breakout-Pong,lambda=10",
                                                "games=Pong-Breakout,lambda=1", "games=Pong-Breakout,lambda=10"]
    config = sweep.runs[2].config
    assert config.schedule.games == ["Pong", "Breakout"] and config.consolidation.lambda_ == 1
    assert (config.torch_threads, config.env.num_threads, config.device) == (2, 2, "cpu")
    assert not config.logging.progress_bar
    with pytest.raises(sweep_grid.SweepError, match="consolidation.lambda is both in the grid and set for every run"):
        sweep_grid.load_sweep(write_sweep(tmp_path, {"lambda": [1, 10]}), ["consolidation.lambda=5"])


def test_a_second_sweep_in_the_same_directory_is_refused(tmp_path, local_ray, capsys):
    out = tmp_path / "out"
    with sweeps.lock(out):
        assert sweep_main([str(write_sweep(tmp_path, {"seed": [0]})), "--out", str(out), *NO_UPDATES]) == 2
    assert f"Another sweep is running in {out} (pid " in capsys.readouterr().err
    assert not (out / "sweep.json").exists()


def test_a_crashing_run_reports_the_exception_line_of_its_crash_log(tmp_path, monkeypatch):
    from agent.dqn import DQNLearner

    def broken(self, batch):
        raise RuntimeError("boom in the TD loss")

    monkeypatch.setattr(DQNLearner, "td_loss", broken)
    log = tmp_path / "logs" / "r.log"
    result = sweeps.train_run("r", str(tmp_path / "r"), str(SMOKE), [*TINY, "schedule.steps_per_visit=80",
                                                                      "dqn.learning_starts=8"], str(log))
    assert result["code"] == 1 and result["error"] == "RuntimeError: boom in the TD loss"
    assert list((tmp_path / "r").glob("crash-*.log"))
    assert log.read_text().rstrip().endswith("exit 1: RuntimeError: boom in the TD loss")
