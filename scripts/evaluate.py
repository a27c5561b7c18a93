#!/usr/bin/env python
"""Evaluate a checkpoint on every game: python scripts/evaluate.py --checkpoint RUN_DIR --episodes 10"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.entry import evaluate  # noqa: E402  (light: Ctrl-C while the rest loads is one line)

if __name__ == "__main__":
    sys.exit(evaluate())
