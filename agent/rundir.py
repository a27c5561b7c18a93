"""The run directory is the run's record: config, eval.csv and TensorBoard events.

Every point is written once. A checkpoint at step S covers everything logged at steps
<= S (the writer is flushed before each checkpoint); a resume from it removes what the
killed run logged after S from eval.csv and from the event files themselves, so no
reader (EventAccumulator, TensorBoard's Rust data server, pandas) sees a point twice or
has to honour purge markers. Files are replaced atomically: a kill leaves the old or the
new version, never half of one.
"""

from __future__ import annotations

import csv
import io
import os
import re
import struct
import time
from pathlib import Path

import yaml

EVAL_COLUMNS = ("step", "visit", "trained_game", "game", "mean_return", "std_return", "episodes", "human_normalized")
# The names a run keeps; evaluate.py refuses to write over any of them.
RECORD_FILES = ("config.yaml", "eval.csv")
RECORD_DIRS = ("tb", "checkpoints", "milestones")
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\..*")


def replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_config(run_dir: Path, config: dict, step: int) -> None:
    """config.yaml holds the config in force; a changed one (a resume with new keys) keeps the old
    as config-until-step-<S>.yaml."""
    path = run_dir / "config.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    if path.exists():
        old = path.read_text()
        if old == text:
            return
        replace_atomically(run_dir / f"config-until-step-{step:012d}.yaml", old.encode())
    replace_atomically(path, text.encode())


def append_eval_rows(run_dir: Path, rows: list[list]) -> None:
    """Append one evaluation's rows to eval.csv (with its header if new) in one write."""
    path = run_dir / "eval.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if not path.exists() or path.stat().st_size == 0:
        writer.writerow(EVAL_COLUMNS)
    writer.writerows(rows)
    with open(path, "a", newline="") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def read_eval_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def truncate_after(run_dir: Path, step: int, evaluation_owed: bool = False) -> None:
    """Forget what a killed run logged after the checkpoint at `step`: it will be logged again.

    With `evaluation_owed` the checkpoint was taken before the evaluation at `step` finished,
    so that evaluation's rows and points (eval/ tags) at `step` go too."""
    _truncate_eval_csv(run_dir / "eval.csv", step, evaluation_owed)
    tb = run_dir / "tb"
    if tb.is_dir():
        for path in sorted(tb.iterdir()):
            if _EVENT_FILE.fullmatch(path.name):
                _truncate_event_file(path, step, evaluation_owed)


def _truncate_eval_csv(path: Path, step: int, evaluation_owed: bool) -> None:
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    # A row cut short by a kill has no valid step or too few fields: it goes too.
    last = step - 1 if evaluation_owed else step
    kept = [rows[0]] + [row for row in rows[1:] if len(row) == len(EVAL_COLUMNS) and row[0].isdigit()
                        and int(row[0]) <= last]
    if len(kept) != len(rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        replace_atomically(path, buffer.getvalue().encode())


def _event_records(data: bytes):
    """(start, end, payload) of each complete TFRecord: u64 length, u32 crc, payload, u32 crc."""
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        end = offset + 12 + length + 4
        if end > len(data):
            return  # cut short by a kill
        yield offset, end, data[offset + 12:offset + 12 + length]
        offset = end


def _truncate_event_file(path: Path, step: int, evaluation_owed: bool) -> None:
    from tensorboard.compat.proto.event_pb2 import Event

    def stale(event) -> bool:
        return event.step > step or (evaluation_owed and event.step == step
                                     and any(v.tag.startswith("eval/") for v in event.summary.value))

    data = path.read_bytes()
    kept, dropped = [], False
    for start, end, payload in _event_records(data):
        if stale(Event.FromString(payload)):
            dropped = True
        else:
            kept.append(data[start:end])
    if dropped or sum(map(len, kept)) != len(data):
        replace_atomically(path, b"".join(kept))


def wait_for_new_event_file_time(tb: Path) -> None:
    """Event files are read in name order, and names start with the creation second: a file made in
    the same second as an older one could sort before it. Wait for the next second if needed."""
    if not tb.is_dir():
        return
    stamps = [int(m.group(1)) for p in tb.iterdir() if (m := _EVENT_FILE.fullmatch(p.name))]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


def owned_by_run(path: Path) -> Path | None:
    """The run directory whose record `path` would overwrite, or None."""
    path = path.resolve()
    parent = path.parent
    if (path.name in RECORD_FILES or path.name.startswith(("config-until-step-", "crash-"))) \
            and (parent / "config.yaml").exists():
        return parent
    for ancestor in path.parents:
        if ancestor.name in RECORD_DIRS and (ancestor.parent / "config.yaml").exists():
            return ancestor.parent
    return None
