#!/usr/bin/env python
"""Evaluate a checkpoint on every game: python scripts/evaluate.py --checkpoint RUN_DIR --episodes 10"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.cli import evaluate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(evaluate_main())
