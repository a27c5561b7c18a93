#!/usr/bin/env python
"""Train a DQN agent through a cycle of Atari games: python scripts/train.py --config configs/quickstart.yaml"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
