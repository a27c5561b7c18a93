"""Command-line entry points (scripts/*.py and the installed console scripts call these)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agent.checkpoint import CheckpointError
from agent.config import ConfigError, load_config


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ewc-train",
        description="Train one DQN agent through a schedule of Atari games, with optional EWC.",
        epilog="Overrides are dotted keys, e.g. schedule.steps_per_visit=5000 consolidation.method=ewc. "
               "Exit codes: 0 finished, 2 bad input, 3 stopped by SIGTERM/SIGINT (checkpoint written), "
               "4 non-finite loss (last good checkpoint kept).")
    parser.add_argument("--config", type=Path, help="YAML config (see configs/)")
    parser.add_argument("--run-dir", type=Path, help="where checkpoints, TensorBoard events and config go "
                        "(default: runs/<config name>-<time>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from agent.trainer import EXIT_BAD_INPUT, Trainer, resume

    try:
        if args.resume is not None:
            if args.run_dir is not None and args.run_dir != args.resume:
                raise ConfigError("--resume RUN_DIR already names the run directory; drop --run-dir.")
            config = None
            if args.config is not None or args.overrides:
                stored = args.resume / "config.yaml"
                config = load_config(args.config or stored, args.overrides)
            trainer = resume(args.resume, config)
        else:
            if args.config is None:
                raise ConfigError("Give --config FILE (e.g. configs/quickstart.yaml), or --resume RUN_DIR.")
            config = load_config(args.config, args.overrides)
            run_dir = args.run_dir or Path("runs") / f"{args.config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            if (run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists():
                raise ConfigError(f"{run_dir} already holds a run. Continue it with --resume {run_dir}, "
                                  "or choose another --run-dir.")
            trainer = Trainer(config, run_dir)
    except (ConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"Run directory: {trainer.run_dir}  (tensorboard --logdir {trainer.run_dir})", file=sys.stderr)
    return trainer.train()
