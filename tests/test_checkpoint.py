"""Atomic checkpoints: damaged, unfinished, foreign and missing files; a full disk; SIGKILL mid-write."""

import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import agent.checkpoint as checkpoint
from agent.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_latest, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def state(value):
    return {"weights": torch.full((1000,), float(value)), "progress": {"global_step": value}}


def test_save_load_and_keep_the_newest(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000000030.pt", "step-000000000040.pt"]
    path, loaded = load_latest(tmp_path)
    assert path.name == "step-000000000040.pt" and loaded["progress"]["global_step"] == 40
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sentinel"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, capsys):
    save_checkpoint(tmp_path, 1, state(1), keep=3)
    latest = save_checkpoint(tmp_path, 2, state(2), keep=3)
    data = latest.read_bytes()
    if damage == "truncate":
        latest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        latest.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        latest.with_suffix(".done").unlink()
    path, loaded = load_latest(tmp_path)
    assert loaded["progress"]["global_step"] == 1
    warning = capsys.readouterr().err
    assert warning.startswith("warning: ") and "step-000000000002.pt" in warning
    assert "using the older step-000000000001.pt" in warning
    if damage != "no_sentinel":
        with pytest.raises(CheckpointError, match="truncated|corrupted"):
            load_checkpoint(latest)


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="No complete checkpoint"):
        load_latest(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "step-000000000001.pt")
    # A torch file of someone else's, given a valid sentinel: refused for its content.
    foreign = tmp_path / "step-000000000005.pt"
    torch.save({"model": torch.zeros(3)}, foreign)
    _forge_sentinel(foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)
    # A pickle that would run code on load: weights_only refuses it, nothing runs.
    evil = tmp_path / "step-000000000006.pt"
    marker = tmp_path / "pwned"
    evil.write_bytes(pickle.dumps(_Exploit(str(marker))))
    _forge_sentinel(evil)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(evil)
    assert not marker.exists()


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _forge_sentinel(path):
    import hashlib
    import json
    path.with_suffix(".done").write_text(json.dumps(
        {"file": path.name, "size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, state(1), keep=3)

    def full_disk(obj, writer):
        writer.write(b"partial data")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoints are intact"):
        save_checkpoint(tmp_path, 2, state(2), keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000000001.done", "step-000000000001.pt"]
    assert load_latest(tmp_path)[1]["progress"]["global_step"] == 1


def test_sigkill_while_writing_resumes_from_the_last_complete_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from agent.checkpoint import save_checkpoint
        from pathlib import Path
        save_checkpoint(Path({str(tmp_path)!r}), 1, {{"w": torch.ones(10), "progress": {{"global_step": 1}}}}, keep=3)
        print("first written", flush=True)
        big = {{"w%d" % i: torch.randn(2_000_000) for i in range(60)}}  # ~480 MB, seconds to write
        save_checkpoint(Path({str(tmp_path)!r}), 2, {{**big, "progress": {{"global_step": 2}}}}, keep=3)
        print("second written", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first written"
    tmp_file = tmp_path / "step-000000000002.pt.tmp"
    deadline = time.monotonic() + 60
    while not (tmp_file.exists() and tmp_file.stat().st_size > 1_000_000):
        assert time.monotonic() < deadline and proc.poll() is None, "the second checkpoint never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "step-000000000002.done").exists()
    path, loaded = load_latest(tmp_path)
    assert path.name == "step-000000000001.pt" and loaded["progress"]["global_step"] == 1
