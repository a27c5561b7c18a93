"""The commands' entry points: scripts/train.py, evaluate.py, sweep.py and the installed ewc-train,
ewc-evaluate and ewc-sweep. This module imports nothing heavy, so a Ctrl-C while torch, the envs and
the config schema load (a second or two) ends in one line and exit 130, not a traceback from inside
an import; agent/cli.py handles it from there on."""

from __future__ import annotations

import sys


def _run(command: str, argv: list[str] | None) -> int:
    try:
        from agent import cli
    except KeyboardInterrupt:
        print("Interrupted while starting: nothing was written.", file=sys.stderr)
        return 130
    return getattr(cli, command)(argv)


def train(argv: list[str] | None = None) -> int:
    return _run("train_main", argv)


def evaluate(argv: list[str] | None = None) -> int:
    return _run("evaluate_main", argv)


def sweep(argv: list[str] | None = None) -> int:
    return _run("sweep_main", argv)
