"""The sweep file and the sweep's record: a grid of configs expanded into validated runs, and OUT/sweep.json.

A sweep file (YAML, e.g. configs/sweep_methods.yaml):

    base: forgetting_demo.yaml      # the config every run starts from (relative to the sweep file)
    overrides: {checkpoint.every: 25000}   # dotted keys set in every run
    grid:                           # every combination of these values is one run
      method: [none, l2, ewc]       # short for consolidation.method; lambda, games likewise
      seed: [0, 1]
    resources: {num_cpus: 2, num_gpus: 0.25}   # per run; runs with num_gpus < 1 share a GPU
    max_retries: 3                  # restarts of a run whose worker died (it resumes from its checkpoint)

Every run's config is validated here, before Ray starts (agent/sweep.py runs them). OUT/sweep.json
records each run's config and each session; a later session with a grid that changes a recorded
run is refused, new values are added as new runs.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from agent.config import ConfigError, TrainConfig, load_config, validate_config
from agent.rundir import replace_atomically

# Short grid keys for the usual axes of a continual-RL sweep; any dotted config key works too.
ALIASES = {"method": "consolidation.method", "lambda": "consolidation.lambda", "games": "schedule.games"}
SWEEP_KEYS = ("base", "overrides", "grid", "resources", "max_retries")
RECORD_FORMAT = "ewc-atari-sweep-v1"


class SweepError(ConfigError):
    """A problem with the sweep file, its output directory or the Ray address, meant for the user."""


@dataclasses.dataclass
class Run:
    name: str  # also its directory's name under the sweep's output directory
    settings: dict[str, Any]  # the grid's values, by dotted key
    overrides: list[str]  # every key=value applied to the base config for this run
    config: TrainConfig


@dataclasses.dataclass
class Sweep:
    path: Path
    base: Path
    runs: list[Run]
    num_cpus: float
    num_gpus: float
    max_retries: int


# ---------------------------------------------------------------- the sweep file
def load_sweep(path: Path, cli_overrides: list[str] = (), num_cpus: float | None = None,
               num_gpus: float | None = None, max_retries: int | None = None) -> Sweep:
    """Read a sweep file and expand its grid into validated run configs (flags win over the file)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"Sweep file {path} does not exist{' (it is a directory)' if path.is_dir() else ''}. "
                         "Give a YAML file such as configs/sweep_methods.yaml.")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path} must hold a mapping with the keys {', '.join(SWEEP_KEYS)}.")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)}; a sweep file has {', '.join(SWEEP_KEYS)} "
                         "(config keys go under overrides: or grid:).")
    if "base" not in spec:
        raise SweepError(f"{path} names no base config: add e.g. `base: smoke.yaml` (relative to {path.parent}).")
    base = path.parent / str(spec["base"])
    if not base.is_file():
        raise SweepError(f"{path}: base config {base} does not exist. `base:` is relative to the sweep file's "
                         f"folder ({path.parent}); the shipped configs are in configs/.")

    fixed = _mapping(spec.get("overrides"), f"{path}: overrides")
    fixed_overrides = [f"{key}={json.dumps(value)}" for key, value in fixed.items()] + list(cli_overrides)
    fixed_keys = set(fixed) | {item.partition("=")[0] for item in cli_overrides}
    axes = []
    for key, values in _mapping(spec.get("grid"), f"{path}: grid").items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list of values, e.g. {key}: [0, 1].")
        if ALIASES.get(key, key) in fixed_keys:
            raise SweepError(f"{path}: {ALIASES.get(key, key)} is both in the grid and set for every run "
                             "(overrides: or the command line); keep it in one place.")
        axes.append((key, ALIASES.get(key, key), values))
    if not axes:
        raise SweepError(f"{path}: the grid is empty, so the sweep would train the base config once. Add an axis, "
                         "e.g. grid: {seed: [0, 1, 2]}, or train one config with scripts/train.py.")

    resources = _mapping(spec.get("resources"), f"{path}: resources")
    unknown = sorted(set(resources) - {"num_cpus", "num_gpus"})
    if unknown:
        raise SweepError(f"{path}: resources has unknown key(s) {', '.join(unknown)}; it takes num_cpus, num_gpus.")
    num_cpus = _number(num_cpus if num_cpus is not None else resources.get("num_cpus", 1), "num_cpus", positive=True)
    num_gpus = _number(num_gpus if num_gpus is not None else resources.get("num_gpus", 0), "num_gpus")
    if num_gpus > 1 and num_gpus != int(num_gpus):
        raise SweepError(f"num_gpus {num_gpus}: Ray gives a task either a share of one GPU (below 1) or whole GPUs.")
    max_retries = max_retries if max_retries is not None else spec.get("max_retries", 3)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise SweepError(f"max_retries must be a whole number of 0 or more, got {max_retries!r}.")

    runs = []
    for values in itertools.product(*(axis[2] for axis in axes)):
        settings = {dotted: value for (_, dotted, _), value in zip(axes, values)}
        name = ",".join(f"{key}={_label(value)}" for (key, _, _), value in zip(axes, values))
        overrides = fixed_overrides + [f"{key}={json.dumps(value)}" for key, value in settings.items()]
        try:
            overrides += _resource_overrides(load_config(base, overrides), num_cpus, num_gpus)
            runs.append(Run(name, settings, overrides, load_config(base, overrides)))
        except ConfigError as exc:
            raise SweepError(f"{path}, run {name}: {exc}\nFix the grid, overrides or base config.") from None
    twice = sorted(name for name, count in collections.Counter(run.name for run in runs).items() if count > 1)
    if twice:
        raise SweepError(f"{path}: the grid gives several runs the same name ({', '.join(twice)}); "
                         "list each value once.")
    return Sweep(path, base, runs, num_cpus, num_gpus, max_retries)


def _resource_overrides(config: TrainConfig, num_cpus: float, num_gpus: float) -> list[str]:
    """What a run's share of the machine implies, where the config leaves it open: as many torch and
    emulator threads as CPUs (not one per core of a shared node), the CPU when no GPU is granted (Ray
    does not hide the GPUs from a task that asked for none), and status lines instead of a bar."""
    threads = max(1, math.floor(num_cpus))
    extra = ["logging.progress_bar=false"]
    if config.torch_threads == 0:
        extra.append(f"torch_threads={threads}")
    if config.env.num_threads == 0:
        extra.append(f"env.num_threads={threads}")
    if config.device == "auto" and num_gpus == 0:
        extra.append("device=cpu")
    return extra


def _mapping(value: Any, what: str) -> dict:
    if value is not None and not isinstance(value, dict):
        raise SweepError(f"{what} must be a mapping of dotted keys to values, e.g. `seed: [0, 1]`.")
    return value or {}


def _number(value: Any, what: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise SweepError(f"{what} must be a {'positive' if positive else 'non-negative'} number, got {value!r}.")
    return value


def _label(value: Any) -> str:
    """A grid value as it appears in a run's directory name."""
    if isinstance(value, list):
        return "-".join(_label(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value).lower() if isinstance(value, bool) else str(value))


# ---------------------------------------------------------------- the sweep's record
def write_record(out: Path, sweep: Sweep, command: list[str], address: str | None) -> dict:
    """Add this session to OUT/sweep.json. Runs new to the grid are appended; a run recorded earlier
    that is gone from the grid, or whose config changed in keys that change a run, is refused."""
    from agent.resume import RESUMABLE_CHANGES, differing_keys, resumable_text

    path = out / "sweep.json"
    record = {"format": RECORD_FORMAT, "runs": [], "sessions": []}
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SweepError(f"{path} cannot be read ({exc}); it is this sweep's record: restore it, or give "
                             "another --out.") from None
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise SweepError(f"{path} is not the record of a sweep; give another --out.")
    recorded = {run["name"]: run for run in record["runs"]}
    current = {run.name: run for run in sweep.runs}
    problems = [f"  {name}: recorded, but no longer in the grid" for name in recorded if name not in current]
    for name in (name for name in current if name in recorded):
        # Through today's schema, as resume does: keys a newer version added take their defaults.
        try:
            before = validate_config(recorded[name]["config"], f"{path} ({name})", stored=True).to_dict()
        except ValueError:
            before = recorded[name]["config"]
        changed = [key for key in differing_keys(before, current[name].config.to_dict())
                   if not key.startswith(RESUMABLE_CHANGES)]
        if changed:
            problems.append(f"  {name}: {', '.join(changed)} changed")
    if problems:
        raise SweepError(f"The sweep in {out} was run with another grid (its record is {path}):\n"
                         + "\n".join(problems) + "\nA sweep's runs are kept as they were: keep their values in "
                         "the grid (new values are added as new runs), or give another --out. Only "
                         f"{resumable_text()} may change.")
    started, added = now(), [name for name in current if name not in recorded]
    record["runs"] += [{"name": name, "dir": name, "settings": current[name].settings, "added": started,
                        "config": current[name].config.to_dict()} for name in added]
    record["sessions"].append({"started": started, "command": command, "address": address or "local",
                               "sweep_file": str(sweep.path), "base": str(sweep.base),
                               "resources": {"num_cpus": sweep.num_cpus, "num_gpus": sweep.num_gpus},
                               "max_retries": sweep.max_retries, "added": added})
    out.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, json.dumps(record, indent=2).encode())
    return record


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
