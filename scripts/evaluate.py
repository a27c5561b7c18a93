#!/usr/bin/env python
"""Evaluate a checkpoint on every game: python scripts/evaluate.py --checkpoint RUN_DIR --episodes 10"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    from agent.cli import evaluate_main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing: nothing was started
    print("Interrupted while starting: nothing was written.", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(evaluate_main())
