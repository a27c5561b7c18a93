"""The run directory is the run's record: config, visit order, eval.csv, plasticity.csv (contexts.csv
when the context is inferred) and TensorBoard events.

Every point is written once. A checkpoint records how many bytes of eval.csv and of each
event file it covers (the writer is flushed first); a resume from it cuts the files back
to those sizes and deletes newer event files, so what a killed run logged after its
checkpoint is gone before it is logged again, and no reader (EventAccumulator,
TensorBoard's Rust data server, pandas) sees a point twice or has to honour purge
markers. Whole files are replaced atomically: a kill leaves the old or the new version.
"""

from __future__ import annotations

import csv
import datetime
import io
import itertools
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import yaml

from agent.checkpoint import list_checkpoints, step_of
from agent.config import ConfigError

EVAL_COLUMNS = ("step", "visit", "trained_game", "game", "mean_return", "std_return", "episodes", "human_normalized")
# The names a run keeps; evaluate.py refuses to write over any of them.
RECORD_FILES = ("config.yaml", "schedule.json", "eval.csv", "contexts.csv", "plasticity.csv")
CSV_FILES = ("eval.csv", "contexts.csv", "plasticity.csv")  # appended to; checkpoints record their sizes
RECORD_DIRS = ("tb", "checkpoints", "milestones")
RECORD_TEXT = ", ".join((*RECORD_FILES, *(f"{name}/" for name in RECORD_DIRS)))  # for messages
WRITER_LOCK = ".writer.lock"  # held by the one process that writes the run (train, resume, a sweep's run)
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\..*")  # TensorBoard reads any name like this


def replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")  # never an event file's name: TensorBoard would read it
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_config(run_dir: Path, config: dict, step: int) -> None:
    """config.yaml holds the config in force; a changed one (a resume with new keys) keeps the old
    as config-until-step-<S>.yaml."""
    _write_versioned(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False), step)


def write_schedule(run_dir: Path, schedule: dict, step: int) -> None:
    """schedule.json holds the visit order in force; a changed one (more cycles on resume) keeps the
    old as schedule-until-step-<S>.json."""
    _write_versioned(run_dir / "schedule.json", json.dumps(schedule, indent=1) + "\n", step)


def read_schedule(run_dir: Path) -> dict | None:
    path = run_dir / "schedule.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_versioned(path: Path, text: str, step: int) -> None:
    """Write `path`; a different earlier version is kept as <stem>-until-step-<S><suffix>."""
    if path.exists():
        old = path.read_text()
        if old == text:
            return
        kept = path.with_name(f"{path.stem}-until-step-{step:012d}{path.suffix}")
        for again in itertools.count(1):  # never over an earlier one (resumed twice at the same step)
            if not kept.exists():
                break
            kept = path.with_name(f"{path.stem}-until-step-{step:012d}.{again}{path.suffix}")
        replace_atomically(kept, old.encode())
    replace_atomically(path, text.encode())


def append_eval_rows(run_dir: Path, rows: list[list]) -> None:
    """Append one evaluation's rows to eval.csv (with its header if new) in one write."""
    append_rows(run_dir / "eval.csv", EVAL_COLUMNS, rows)


def append_rows(path: Path, columns: tuple[str, ...], rows: list[list]) -> None:
    """Append rows to a CSV file of the record (with its header if new) in one write."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if not path.exists() or path.stat().st_size == 0:
        writer.writerow(columns)
    writer.writerows(rows)
    with open(path, "a", newline="") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def record_sizes(run_dir: Path) -> dict[str, int]:
    """Bytes of the CSV files and every event file now: what a checkpoint taken now covers (the
    TensorBoard writer is flushed first)."""
    sizes = {name: _size(run_dir / name) for name in CSV_FILES}
    for path in _event_files(run_dir):
        sizes[f"tb/{path.name}"] = path.stat().st_size
    return sizes


def truncate_to(run_dir: Path, sizes: dict[str, int]) -> None:
    """Cut the CSV files and the event files back to a checkpoint's `sizes`, and delete the event files
    made after it: what a killed run logged after its checkpoint goes, to be logged again. A row or
    record half written by the kill goes with it."""
    for path in [*(run_dir / name for name in CSV_FILES), *_event_files(run_dir)]:
        if not path.exists():
            continue
        kept = sizes.get(str(path.relative_to(run_dir)), 0)
        if kept == 0:
            path.unlink()
        elif path.stat().st_size > kept:
            with open(path, "r+b") as handle:
                handle.truncate(kept)
                os.fsync(handle.fileno())


def cut_back(run_dir: Path, sizes: dict[str, int] | None, step: int) -> None:
    """Make a run directory agree with the checkpoint a run resumes from, taken at `step` when the record
    had `sizes`: what a killed run logged after it goes (it is logged again), and so do the milestones of
    the switches it will redo."""
    if sizes is None:
        print("warning: this checkpoint predates the record of file sizes: points a killed run logged "
              "after it may appear twice in TensorBoard and eval.csv.", file=sys.stderr)
    else:
        truncate_to(run_dir, sizes)
    for milestone in list_checkpoints(run_dir / "milestones"):
        if step_of(milestone) > step:
            milestone.unlink()
            milestone.with_suffix(".done").unlink()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _event_files(run_dir: Path) -> list[Path]:
    tb = run_dir / "tb"
    return sorted(p for p in tb.iterdir() if _EVENT_FILE.fullmatch(p.name)) if tb.is_dir() else []


def wait_for_new_event_file_time(run_dir: Path) -> None:
    """Event files are read in name order, and names start with the creation second: a file made in
    the same second as an older one could sort before it. Wait for the next second if needed (at
    most 2 s: a clock behind the files' is not waited for)."""
    stamps = [int(_EVENT_FILE.fullmatch(p.name).group(1)) for p in _event_files(run_dir)]
    deadline = time.monotonic() + 2.0
    while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)


def holds_run(directory: Path) -> bool:
    """Whether `directory` is a run directory (training wrote its config or checkpoints there)."""
    return (directory / "config.yaml").is_file() or (directory / "checkpoints").is_dir()


def owned_by_run(path: Path) -> Path | None:
    """The run directory whose record `path` would overwrite, or None."""
    path = path.resolve()
    parent = path.parent
    if (path.name in RECORD_FILES or path.name.startswith(("config-until-step-", "schedule-until-step-", "crash-"))) \
            and holds_run(parent):
        return parent
    for ancestor in path.parents:
        if ancestor.name in RECORD_DIRS and holds_run(ancestor.parent):
            return ancestor.parent
    return None


class RunBusy(RuntimeError):
    """Another process is writing the run directory."""


class _Lock:
    """An flock held on an open file; `release` empties the file (it named the holder) and lets go."""

    def __init__(self, handle):
        self.handle = handle

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.truncate(0)
            self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def exclusive(path: Path, owner: str, wait: float = 0.0) -> _Lock:
    """An exclusive flock on `path` (the kernel releases it however the process ends), usable as a
    context manager; waits up to `wait` seconds, then raises TimeoutError naming the holder."""
    import fcntl

    handle = open(path, "a+")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read().strip() or "holder unknown"
                handle.close()
                raise TimeoutError(holder) from None
            time.sleep(0.2)
    handle.truncate(0)
    handle.write(owner + "\n")
    handle.flush()
    return _Lock(handle)


def holder() -> str:
    """What a lock file names: this process, its host and since when (the message of whoever is refused)."""
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()}, since {since}"


def hold_run(run_dir: Path) -> _Lock:
    """The run directory's writer lock, taken before anything of the record is written. A second
    writer (train.py on the same --run-dir or --resume, a sweep's run) is refused with RunBusy naming
    the holder; readers (report.py, TensorBoard, evaluate.py) take no lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return exclusive(run_dir / WRITER_LOCK, holder())
    except TimeoutError as exc:
        raise RunBusy(f"{run_dir} is being written by another process ({exc}). Two writers would interleave "
                      "its eval.csv, TensorBoard events and checkpoints. Wait for that process to finish, or stop "
                      f"it (SIGTERM writes a checkpoint), then continue with: python scripts/train.py --resume "
                      f"{run_dir}") from None


def make_dir(path: Path, what: str = "run directory", option: str = "--run-dir") -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists()), None)
        reason = f"{blocker} is a file" if blocker is not None and not blocker.is_dir() else exc.strerror or exc
        raise ConfigError(f"cannot create {what} {path}: {reason}; choose another {option}.") from None


def check_creatable(path: Path, option: str) -> None:
    """Refuse a folder that could not be created and written here, without creating it: its nearest existing
    ancestor must be a directory this process can write in."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file; choose another {option}.")
    if existing is not None:
        check_writable(existing, option)


def check_writable(folder: Path, option: str) -> None:
    """Refuse a folder this process cannot create files in (read-only, another user's), naming the option."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{option}: cannot write in {folder} ({exc.strerror or exc}); choose a folder you can "
                          f"write to.") from None


def is_run_dir(directory: Path) -> bool:
    """Whether training made `directory` (stricter than holds_run: a config.yaml of its own and the visit order
    training writes beside it, or a checkpoint), so an unrelated config.yaml or checkpoints/ does not count."""
    return (directory / "config.yaml").is_file() and (
        (directory / "schedule.json").is_file() or any((directory / "checkpoints").glob("step-*.pt")))


def check_new_place(path: Path, option: str) -> None:
    """Refuse a new run's or sweep's directory that lies inside another run's directory (its tb/, checkpoints/,
    milestones/ or anywhere below it: that run's TensorBoard would show the new one)."""
    path = path.resolve()
    inside = next((ancestor for ancestor in path.parents if is_run_dir(ancestor)), None)
    if inside is not None:
        raise ConfigError(f"{option} {path} lies inside the run directory {inside}: the new directory would mix "
                          f"with that run's record (TensorBoard would show both). Choose a place outside it, e.g. "
                          f"{option} {inside.parent / (path.name + '-' + inside.name)}.")
