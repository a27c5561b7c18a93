"""Atomic checkpoints: write to a temporary name, fsync, rename, then a sentinel.

A checkpoint is `step-<N>.pt` beside `step-<N>.done`, a JSON sentinel written last
with the file's size and SHA-256. A checkpoint without a matching sentinel (killed
mid-write, truncated, corrupted) is skipped with a warning on stderr and the previous
one is used. Files are read with `torch.load(weights_only=True)`: tensors and plain
containers only, never arbitrary pickled code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
import warnings
import zipfile
from pathlib import Path

import torch

CHECKPOINT_FORMAT = "ewc-atari-checkpoint-v1"
# step-<N>.pt, or step-<N>.<k>.pt for a k-th different state saved at the same step (a checkpoint
# written on a stop just before a switch, then the switch's own): an older file is never replaced.
_NAME = re.compile(r"step-(\d+)(?:\.(\d+))?\.pt")


def _order(path: Path) -> tuple[int, int]:
    step, again = _NAME.fullmatch(path.name).groups()
    return int(step), int(again or 0)


def step_of(path: Path) -> int:
    """The agent step in a checkpoint's file name."""
    return _order(path)[0]
_WHAT_TO_GIVE = "Give a run directory, or a checkpoints/step-N.pt file in one, written by ewc-train."


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with a message meant for the user."""


class _HashingWriter:
    """File wrapper that hashes what passes through, so the file is not read back."""

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, step: int, state: dict, keep: int | None, replace: bool = False) -> Path:
    """Write `state` as step-<step>.pt atomically; keep the newest `keep` checkpoints (None: all).

    An existing file for the same step is kept and the new one named step-<step>.<k>.pt, unless
    `replace` (for files that are rewritten identically when a resumed run redoes their step)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:012d}.pt"
    for again in itertools.count(1):
        if replace or not path.exists():
            break
        path = directory / f"step-{step:012d}.{again}.pt"
    tmp = path.with_suffix(".pt.tmp")
    try:
        with open(tmp, "wb") as handle:
            writer = _HashingWriter(handle)
            torch.save({"format": CHECKPOINT_FORMAT, **state}, writer)
            handle.flush()
            os.fsync(handle.fileno())
        path.with_suffix(".done").unlink(missing_ok=True)  # an old sentinel never vouches for a new file
        os.replace(tmp, path)
        sentinel = {"file": path.name, "size": writer.size, "sha256": writer.digest.hexdigest(), "step": step}
        sentinel_tmp = path.with_suffix(".done.tmp")
        with open(sentinel_tmp, "w") as handle:
            json.dump(sentinel, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(sentinel_tmp, path.with_suffix(".done"))
        _fsync_dir(directory)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        for leftover in (tmp, path.with_suffix(".done.tmp")):
            leftover.unlink(missing_ok=True)
        if path.exists() and not path.with_suffix(".done").exists():
            path.unlink()
        raise CheckpointError(f"Could not write checkpoint {path}: {exc}. The previous checkpoints are intact; "
                              "free disk space, or set checkpoint.replay=false for smaller checkpoints.") from exc
    for old in list_checkpoints(directory)[:-keep] if keep else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".done").unlink(missing_ok=True)
    for leftover in directory.glob("*.tmp"):  # from writes that a kill interrupted
        leftover.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files with a sentinel, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.fullmatch(p.name) and p.with_suffix(".done").exists()]
    return sorted(found, key=_order)


def verify(path: Path) -> str | None:
    """None when the file matches its sentinel, else what is wrong."""
    sentinel_path = path.with_suffix(".done")
    if not path.is_file():
        return f"{path} does not exist"
    if not sentinel_path.is_file():
        return f"{path.name} has no completion sentinel {sentinel_path.name} (it was not finished)"
    try:
        sentinel = json.loads(sentinel_path.read_bytes())
    except OSError as exc:
        return f"the sentinel {sentinel_path.name} of {path.name} is unreadable ({exc.strerror})"
    except ValueError:  # not UTF-8 or not JSON
        sentinel = None
    if not isinstance(sentinel, dict) or not {"size", "sha256"} <= sentinel.keys():
        return f"the sentinel {sentinel_path.name} of {path.name} is damaged (not a JSON object with size and sha256)"
    if path.stat().st_size != sentinel["size"]:
        return f"{path.name} is {path.stat().st_size} bytes, the sentinel says {sentinel['size']} (truncated)"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != sentinel["sha256"]:
        return f"{path.name} does not match its checksum (corrupted)"
    return None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load one checkpoint file after checking it against its sentinel."""
    if path.is_file() and not _NAME.fullmatch(path.name) and not path.with_suffix(".done").exists():
        raise CheckpointError(f"{path} is not a checkpoint of this project, which writes step-N.pt files with a "
                              f"step-N.done sentinel beside them. {_WHAT_TO_GIVE}")
    problem = verify(path)
    if problem:
        raise CheckpointError(f"Cannot use checkpoint: {problem}.")
    return _load(path, map_location)


def _load(path: Path, map_location) -> dict:
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises several types for foreign or damaged files; its advice would run their code
        what = ("it holds Python objects other than tensors, which are refused because loading them could run "
                "untrusted code" if zipfile.is_zipfile(path) else "it is not a torch file, or it is damaged")
        raise CheckpointError(f"{path} is not a checkpoint of this project: {what}. {_WHAT_TO_GIVE}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no '{CHECKPOINT_FORMAT}' marker). "
                              f"{_WHAT_TO_GIVE}")
    return state


def load_latest(directory: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict]:
    """The newest checkpoint that verifies; damaged newer ones are skipped with a warning on stderr."""
    found = [p for p in directory.iterdir() if _NAME.fullmatch(p.name)] if directory.is_dir() else []
    skipped = []
    for path in sorted(found, key=_order, reverse=True):
        problem = verify(path)
        if problem is None:
            for why in skipped:
                print(f"warning: skipping a damaged checkpoint in {directory}: {why}; using the older "
                      f"{path.name}.", file=sys.stderr)
            return path, _load(path, map_location)
        skipped.append(problem)
    if not skipped:
        raise CheckpointError(f"No complete checkpoint in {directory}.")
    details = "\n".join(f"  {problem}" for problem in skipped)
    raise CheckpointError(f"No checkpoint in {directory} can be used:\n{details}\nRestore the files from a backup "
                          "or start a new run; the damaged files are left as they are.")
