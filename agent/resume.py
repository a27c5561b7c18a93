"""Whether a checkpoint may be resumed with a config, and resuming it.

A resumed run must be the same run: only the keys in RESUMABLE_CHANGES (the schedule's length,
where and how fast it runs, what it logs and evaluates) may differ from the config stored in
its checkpoint, and the visit order recorded in schedule.json must be the one this version of
the code derives. A run keeps the precision it started with (`dqn.precision: auto` resolves to
the stored one), on any machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent import rundir
from agent.checkpoint import list_checkpoints, load_latest
from agent.config import TrainConfig, load_config, validate_config
from agent.trainer import Trainer

# Keys that may differ between a checkpoint's config and the config it is resumed with.
RESUMABLE_CHANGES = ("schedule.cycles", "schedule.steps_per_visit", "device", "torch_threads", "env.overlap",
                     "env.num_threads", "replay.storage", "dqn.cuda_graph",
                     "logging.", "checkpoint.every", "checkpoint.keep", "consolidation.probe_every", "eval.",
                     "plasticity.every", "plasticity.states")


def resumable_text() -> str:
    """RESUMABLE_CHANGES as a user reads them: a prefix such as `eval.` shown as `eval.*`."""
    return ", ".join(f"{key}*" if key.endswith(".") else key for key in RESUMABLE_CHANGES)


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def resume(run_dir: Path, config: TrainConfig | None = None) -> Trainer:
    """A Trainer continuing the run in `run_dir`; `config`, when given, must agree on the unsafe keys."""
    run_dir = Path(run_dir)
    if _never_checkpointed(run_dir):
        # Killed before its first checkpoint (written before any step is taken): nothing was
        # trained or evaluated, so the run starts over from its config.
        print(f"{run_dir} was stopped before its first checkpoint; starting it over.", file=sys.stderr)
        return Trainer(config or load_config(run_dir / "config.yaml"), run_dir)
    path, state = load_latest(run_dir / "checkpoints")
    saved = validate_config(state["config"], f"config stored in {path}", stored=True)
    if config is None:
        config = saved
    elif config.dqn.precision == "auto":  # a run keeps the precision it started with, on any machine
        config = config.model_copy(deep=True)
        config.dqn.precision = saved.dqn.precision
    unsafe = [key for key in differing_keys(saved.to_dict(), config.to_dict())
              if not key.startswith(RESUMABLE_CHANGES)]
    if unsafe:
        details = "\n".join(f"  {key}: checkpoint {_lookup(saved.to_dict(), key)!r}, now "
                            f"{_lookup(config.to_dict(), key)!r}" for key in unsafe)
        raise ValueError(f"Cannot resume {run_dir}: the config differs from the checkpoint's in keys that "
                         f"change the run:\n{details}\nOnly {resumable_text()} may change on resume.")
    recorded = (rundir.read_schedule(run_dir) or {}).get("visits", [])
    visits = config.schedule.visits(config.seed)
    shared = min(len(recorded), len(visits))
    if recorded[:shared] != visits[:shared]:
        raise ValueError(f"Cannot resume {run_dir}: its schedule.json records the visits {recorded}, but this "
                         f"version of the code orders them {visits}. Resume it with the version that started it.")
    return Trainer(config, run_dir, checkpoint=state)


def _never_checkpointed(run_dir: Path) -> bool:
    """A run directory with its config but no complete checkpoint (the first is written before any step)."""
    return (run_dir / "config.yaml").is_file() and not list_checkpoints(run_dir / "checkpoints") \
        and not (run_dir / "eval.csv").exists()


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
