"""One writer per run directory: a second trainer on a run that another process is writing is refused
(exit 2, naming the holder) and changes nothing; the kernel lets go of the lock however the holder ends."""

import os
import signal
import subprocess
import sys
import time

import pytest
from test_train import ROOT, SMOKE, TINY, start_a_long_run

from agent.checkpoint import load_latest
from agent.cli import train_main


def snapshot(run_dir):
    """Every file of the run and its bytes."""
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_second_writer_is_refused_and_changes_nothing(tmp_path, capsys, monkeypatch):
    import agent.resume

    run = tmp_path / "run"
    first = start_a_long_run(run)
    try:
        first.send_signal(signal.SIGSTOP)  # frozen while holding the lock: its files cannot change meanwhile
        before = snapshot(run)
        capsys.readouterr()
        loading = agent.resume.load_latest
        monkeypatch.setattr(agent.resume, "load_latest", lambda *a, **k: pytest.fail("refused only after loading"))
        assert train_main(["--resume", str(run)]) == 2
        monkeypatch.setattr(agent.resume, "load_latest", loading)
        err = capsys.readouterr().err
        assert f"pid {first.pid} on " in err and "being written by another process" in err and "--resume" in err
        assert train_main(["--resume", str(run), "schedule.cycles=2"]) == 2  # with changed keys too
        assert snapshot(run) == before
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=120)[0]
    finally:
        first.kill()
    assert first.returncode == 3, output
    stopped_at = load_latest(run / "checkpoints")[1]["progress"]["global_step"]
    # The holder is gone (the kernel released its lock): the run resumes.
    assert train_main(["--resume", str(run), f"schedule.steps_per_visit={stopped_at + 40}"]) == 0
    assert load_latest(run / "checkpoints")[1]["progress"]["global_step"] == stopped_at + 40
    assert (run / ".writer.lock").read_text() == ""  # released: it names no holder


def test_a_held_lock_names_its_holder_and_is_released_with_the_process(tmp_path):
    from agent import rundir

    held = rundir.hold_run(tmp_path / "run")
    assert f"pid {os.getpid()} on " in (tmp_path / "run" / ".writer.lock").read_text()
    child = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from agent import rundir\n"
                            "try:\n    rundir.hold_run(Path(sys.argv[1]))\nexcept rundir.RunBusy as e:\n"
                            "    print(e); sys.exit(7)", str(tmp_path / "run")],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert child.returncode == 7 and f"pid {os.getpid()}" in child.stdout
    held.release()
    again = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from agent import rundir\n"
                            "rundir.hold_run(Path(sys.argv[1]))", str(tmp_path / "run")],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.returncode == 0, again.stderr


def test_a_stop_signal_while_many_envs_are_built_ends_the_run_at_once(tmp_path):
    """ale-py builds 256 envs in C++ for about 40 s holding the GIL, where no Python handler can run: the
    signal takes its default action instead (the process ends at once, -SIGTERM, which a deferred handler
    would turn into exit 3 after the build), and the run keeps the checkpoint written before the visit."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", SMOKE, "--run-dir", str(run), *TINY,
           "schedule.games=[Pong]", "env.num_envs=256", "replay.capacity_per_game=4096"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if "creating 256 Pong envs" in line:
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                break
        output.append(proc.communicate(timeout=120)[0])
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM, "".join(output)
    assert took < 10, f"the run took {took:.1f} s to end after SIGTERM"  # the bound; at once in practice
    assert "a stop signal now ends the run at once" in "".join(output)
    assert load_latest(run / "checkpoints")[1]["progress"]["global_step"] == 0
