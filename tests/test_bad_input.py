"""Bad input gives exit code 2 and one `error: ` message naming the problem and the fix: no traceback, no raw
warning, no crash, and nothing on disk lost or changed."""

import errno
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_train import SMOKE, TINY, tiny_run

from agent.checkpoint import load_latest, save_checkpoint, verify
from agent.cli import evaluate_main, train_main
from agent.config import ConfigError, load_config, validate_config

ROOT = Path(__file__).resolve().parent.parent


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refused(capsys, code: int, *phrases: str) -> str:
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert "Traceback" not in err and "Warning" not in err, err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("bad") / "run", "Pong", 8)


@pytest.fixture
def run_copy(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


# 1. A run directory that cannot be created.
def test_run_dir_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"keep me")
    code = train_main(["--config", SMOKE, "--run-dir", str(blocker / "run"), *TINY])
    refused(capsys, code, f"cannot create run directory {blocker / 'run'}", f"{blocker} is a file",
            "choose another --run-dir")
    code = train_main(["--config", SMOKE, "--run-dir", str(blocker), *TINY])
    refused(capsys, code, f"cannot create run directory {blocker}", "choose another --run-dir")
    assert blocker.read_bytes() == b"keep me"


def test_run_dir_under_a_read_only_directory(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes into read-only directories: refuse as the kernel would for anyone else
        def mkdir(self, *args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        code = train_main(["--config", SMOKE, "--run-dir", str(locked / "run"), *TINY])
    finally:
        locked.chmod(0o700)
    refused(capsys, code, f"cannot create run directory {locked / 'run'}: Permission denied; choose another --run-dir")
    assert list(locked.iterdir()) == []


# 2. Evaluation settings ale-py would crash on.
@pytest.mark.parametrize("option, value, message", [
    ("--num-envs", "0", "--num-envs must be in 1..1024, got 0"),
    ("--num-envs", "-2", "--num-envs must be in 1..1024, got -2"),
    ("--num-envs", "4096", "--num-envs must be in 1..1024, got 4096"),
    ("--seed", "-1", "--seed must not be negative, got -1"),
])
def test_evaluate_refuses_bad_settings(run_dir, capsys, option, value, message):
    before = files(run_dir)
    refused(capsys, evaluate_main(["--checkpoint", str(run_dir), "--episodes", "1", option, value]), message)
    assert files(run_dir) == before


# 3. learning_starts that leaves the first visit (and the anchor it ends with) untrained.
def test_learning_starts_beyond_the_visit_or_the_buffer(tmp_path, capsys):
    code = train_main(["--config", SMOKE, "--run-dir", str(tmp_path / "r"), "dqn.learning_starts=5000"])
    refused(capsys, code, "dqn.learning_starts (5000) exceeds schedule.steps_per_visit (1000)",
            "Lower dqn.learning_starts or raise schedule.steps_per_visit",
            "dqn.learning_starts (5000) exceeds replay.capacity_per_game (2000)",
            "Lower dqn.learning_starts or raise replay.capacity_per_game")
    assert not (tmp_path / "r").exists()
    assert load_config(SMOKE, ["dqn.learning_starts=0"]).dqn.learning_starts == 0
    assert load_config(SMOKE, ["dqn.learning_starts=1000"]).dqn.learning_starts == 1000
    # The stored config of an earlier run is still evaluated and resumed as it is.
    stored = load_config(SMOKE).to_dict()
    stored["dqn"]["learning_starts"] = 5000
    assert validate_config(stored, stored=True).dqn.learning_starts == 5000


# 4. Replay too small for the batch or for the envs: a clean message, not "  : ... (got {whole config})".
@pytest.mark.parametrize("overrides, phrases", [
    (["replay.capacity_per_game=64", "dqn.batch_size=128", "dqn.learning_starts=0"],
     ["dqn.batch_size (128) exceeds replay.capacity_per_game (64)",
      "Raise replay.capacity_per_game or lower dqn.batch_size"]),
    (["replay.capacity_per_game=64", "env.num_envs=16", "dqn.learning_starts=0"],
     ["replay.capacity_per_game (64) is too small for env.num_envs (16)",
      "Raise replay.capacity_per_game to 128 or more, or lower env.num_envs"]),
])
def test_replay_too_small(tmp_path, capsys, overrides, phrases):
    code = train_main(["--config", SMOKE, "--run-dir", str(tmp_path / "r"), *overrides])
    err = refused(capsys, code, *phrases)
    assert "  : " not in err and "(got {" not in err
    assert not (tmp_path / "r").exists()


# 5. A directory given as the config.
def test_config_is_a_directory(tmp_path, capsys):
    code = train_main(["--config", str(ROOT / "configs"), "--run-dir", str(tmp_path / "r")])
    refused(capsys, code, "is a directory", "pass a YAML file such as configs/quickstart.yaml")


# 6. Integers written as 1e6 (a string to YAML) or 5.0e+6 (a float).
def test_integers_in_scientific_notation(tmp_path, capsys):
    config = load_config(SMOKE, ["schedule.steps_per_visit=1e6", "dqn.batch_size=32.0", "seed=1.5e3",
                                 "checkpoint.every=2.5e5", "env.num_envs='2e0'", "dqn.double_dqn=false"])
    assert config.schedule.steps_per_visit == 1_000_000 and type(config.schedule.steps_per_visit) is int
    assert (config.dqn.batch_size, config.seed, config.checkpoint.every, config.env.num_envs) == (32, 1500, 250_000, 2)
    assert config.dqn.double_dqn is False
    path = tmp_path / "big.yaml"
    path.write_text(Path(SMOKE).read_text().replace("steps_per_visit: 1000", "steps_per_visit: 1e6")
                    .replace("capacity_per_game: 2000", "capacity_per_game: 5.0e+6")
                    .replace("decay_steps: 1000", "decay_steps: 5.0e6"))
    config = load_config(path)
    assert (config.schedule.steps_per_visit, config.replay.capacity_per_game, config.epsilon.decay_steps) == \
        (1_000_000, 5_000_000, 5_000_000)
    code = train_main(["--config", SMOKE, "--run-dir", str(tmp_path / "r"), "dqn.batch_size=2.5"])
    refused(capsys, code, "dqn.batch_size: must be a whole number", "(got 2.5)")
    with pytest.raises(ConfigError, match=r"schedule.cycles: must be a whole number.*'1.5'"):
        load_config(SMOKE, ["schedule.cycles='1.5'"])
    with pytest.raises(ConfigError, match=r"schedule.steps_per_visit: .*integer"):
        load_config(SMOKE, ["schedule.steps_per_visit=lots"])


# 7. A foreign file in place of a checkpoint: never the advice to load it with weights_only=False.
class Foreign:
    pass


def forge_sentinel(path: Path) -> None:
    path.with_suffix(".done").write_text(json.dumps(
        {"file": path.name, "size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))


@pytest.mark.parametrize("content, what", [
    ({"a": object()}, "it holds Python objects other than tensors"),
    (Foreign(), "it holds Python objects other than tensors"),
    (b"\x80\x02not torch at all", "it is not a torch file, or it is damaged"),
])
def test_foreign_checkpoint(run_copy, capsys, content, what):
    checkpoint = sorted((run_copy / "checkpoints").glob("*.pt"))[-1]
    if isinstance(content, bytes):
        checkpoint.write_bytes(content)
    else:
        torch.save(content, checkpoint)
    forge_sentinel(checkpoint)
    before = files(run_copy)
    for main, target in ((train_main, "--resume"), (evaluate_main, "--checkpoint")):
        for path in (run_copy, checkpoint) if main is evaluate_main else (run_copy,):
            err = refused(capsys, main([target, str(path)]), f"{checkpoint} is not a checkpoint of this project", what,
                          "Give a run directory, or a checkpoints/step-N.pt file in one, written by ewc-train")
            assert "weights_only" not in err
    assert files(run_copy) == before


def test_foreign_file_without_sentinel(tmp_path, capsys):
    model = tmp_path / "model.pt"
    torch.save({"a": object()}, model)
    before = model.read_bytes()
    err = refused(capsys, evaluate_main(["--checkpoint", str(model)]), f"{model} is not a checkpoint of this project",
                  "step-N.pt files with a step-N.done sentinel beside them")
    assert "weights_only" not in err and model.read_bytes() == before


# 8. A damaged sentinel: a readable problem, a plain warning line, and a listing when nothing is left.
SENTINELS = [os.urandom(64) + b"\xff", b"42", b"[1, 2]", b"{}", b'{"size": 5}', b"not json"]


@pytest.mark.parametrize("sentinel", SENTINELS, ids=range(len(SENTINELS)))
def test_damaged_sentinel_falls_back_with_a_plain_warning(tmp_path, capsys, sentinel):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(3), "progress": {"global_step": 1}}, keep=3)
    latest = save_checkpoint(tmp_path, 2, {"w": torch.ones(3), "progress": {"global_step": 2}}, keep=3)
    latest.with_suffix(".done").write_bytes(sentinel)
    assert verify(latest) == ("the sentinel step-000000000002.done of step-000000000002.pt is damaged "
                              "(not a JSON object with size and sha256)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path, state = load_latest(tmp_path)
    assert state["progress"]["global_step"] == 1
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "step-000000000002.done" in err
    assert "using the older step-000000000001.pt" in err


def test_no_usable_checkpoint_lists_each_one(run_copy, capsys):
    first, checkpoint = sorted((run_copy / "checkpoints").glob("*.pt"))  # step 0 and the last
    first.unlink()
    first.with_suffix(".done").unlink()
    checkpoint.with_suffix(".done").write_bytes(b"42")
    older = checkpoint.with_name("step-000000000004.pt")
    older.write_bytes(b"half written")
    before = files(run_copy)
    for main, target in ((train_main, "--resume"), (evaluate_main, "--checkpoint")):
        refused(capsys, main([target, str(run_copy)]), f"No checkpoint in {run_copy / 'checkpoints'} can be used",
                f"the sentinel step-000000000008.done of {checkpoint.name} is damaged",
                "step-000000000004.pt has no completion sentinel",
                "Restore the files from a backup or start a new run; the damaged files are left as they are")
    assert files(run_copy) == before


# 9. --resume of something that is not a run.
def test_resume_of_a_missing_or_empty_directory(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    refused(capsys, train_main(["--resume", str(missing)]), f"no such run directory: {missing}")
    refused(capsys, train_main(["--resume", str(missing), "--print-config"]), f"no such run directory: {missing}")
    refused(capsys, train_main(["--print-config"]), "--print-config prints the config of --config FILE")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, train_main(["--resume", str(empty)]), f"{empty} does not hold a run",
            "start a new run with --config FILE")
    refused(capsys, evaluate_main(["--checkpoint", str(empty)]), f"{empty} does not hold a run")
    assert list(empty.iterdir()) == []
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    refused(capsys, train_main(["--resume", str(a_file)]), "is a file, not a run directory")
    refused(capsys, evaluate_main(["--checkpoint", str(missing)]), f"{missing} does not exist")


# Slips users make: an exit 2 that names the fix, and no run directory left behind.
@pytest.mark.parametrize("override, phrases", [
    ("schedule.games=[Breakout, Pong", ["Override 'schedule.games=[Breakout, Pong'", "is not valid YAML",
                                         "schedule.games=[Breakout, Pong]"]),
    ("epsilon.start=0.005", ["epsilon.start (0.005) is below epsilon.end (0.01)", "Swap them"]),
    ("eval.every=1", ["eval.every (1) evaluates more than 100 times per visit of 1000 steps", "Raise eval.every"]),
    ("env.num_envs=4096", ["env.num_envs", "1024"]),
    ("eval.num_envs=4096", ["eval.num_envs", "1024"]),
])
def test_slips_in_overrides_are_refused_before_the_run_exists(tmp_path, capsys, override, phrases):
    run = tmp_path / "r"
    refused(capsys, train_main(["--config", SMOKE, "--run-dir", str(run), override]), *phrases)
    assert not run.exists()
    refused(capsys, train_main(["--config", SMOKE, "--print-config", override]), *phrases)


def test_a_malformed_override_on_resume_and_in_a_sweep(run_copy, tmp_path, capsys):
    before = files(run_copy)
    refused(capsys, train_main(["--resume", str(run_copy), "schedule.games=[Pong"]), "is not valid YAML")
    assert files(run_copy) == before
    from agent.cli import sweep_main
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {SMOKE}\ngrid:\n  seed: [0]\n")
    refused(capsys, sweep_main([str(sweep), "--out", str(tmp_path / "out"), "schedule.games=[Pong"]),
            "is not valid YAML")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_machine_leaves_no_run_directory(tmp_path, capsys):
    run = tmp_path / "r"
    refused(capsys, train_main(["--config", SMOKE, "--run-dir", str(run), "device=cuda"]),
            "CUDA is not available", "device=auto")
    assert not run.exists()


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "sweep.py", "report.py", "entry:train"])
def test_ctrl_c_while_starting_is_one_line_not_a_traceback(script, tmp_path):
    """SIGINT as numpy starts to be imported (an import hook sends it: no timing involved), with Python's own
    Ctrl-C handler installed as in a terminal (a test runner's worker may ignore SIGINT, and children inherit
    that). `entry:train` is what the installed ewc-train runs."""
    import subprocess
    import sys

    code = ("import os, runpy, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'numpy':\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            + (f"sys.argv = [{str(ROOT / 'scripts' / script)!r}, '--help']\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n" if script.endswith(".py") else
               f"sys.path.insert(0, {str(ROOT)!r})\nsys.argv = ['ewc-train', '--help']\n"
               "from agent.entry import train\nsys.exit(train())\n"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "Interrupted" in done.stderr


def test_a_new_run_or_sweep_inside_another_run_is_refused(run_copy, tmp_path, capsys):
    before = files(run_copy)
    for place in (run_copy / "tb" / "new", run_copy / "nested"):
        refused(capsys, train_main(["--config", SMOKE, "--run-dir", str(place)]),
                f"lies inside the run directory {run_copy.resolve()}")
        assert not place.exists()
    from agent.cli import sweep_main
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {SMOKE}\ngrid:\n  seed: [0]\n")
    refused(capsys, sweep_main([str(sweep), "--out", str(run_copy)]), "is a run directory")
    refused(capsys, sweep_main([str(sweep), "--out", str(run_copy / "tb" / "sweep")]), "lies inside the run directory")
    assert files(run_copy) == before


def test_unrelated_files_above_a_run_do_not_block_it_and_unwritable_places_are_refused(tmp_path, capsys):
    """A home folder with its own checkpoints/ and config.yaml is not a run directory; /proc takes no files."""
    from agent.cli import sweep_main
    from agent.rundir import check_new_place

    home = tmp_path / "home"
    (home / "checkpoints").mkdir(parents=True)
    (home / "config.yaml").write_text("something: else\n")
    check_new_place(home / "project" / "runs" / "x", "--run-dir")  # no error
    refused(capsys, train_main(["--config", SMOKE, "--run-dir", "/proc/self/fdinfo"]), "--run-dir: cannot write in")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {SMOKE}\ngrid:\n  seed: [0]\n")
    refused(capsys, sweep_main([str(sweep), "--out", "/proc/ewc-sweep"]), "--out: cannot write in /proc")
    assert not Path("/proc/ewc-sweep").exists()
