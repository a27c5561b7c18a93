#!/usr/bin/env python
"""Train a DQN agent through a cycle of Atari games: python scripts/train.py --config configs/quickstart.yaml"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    from agent.cli import train_main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing: nothing was started
    print("Interrupted while starting: nothing was written.", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(train_main())
