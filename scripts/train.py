#!/usr/bin/env python
"""Train a DQN agent through a cycle of Atari games: python scripts/train.py --config configs/quickstart.yaml"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.entry import train  # noqa: E402  (light: Ctrl-C while the rest loads is one line)

if __name__ == "__main__":
    sys.exit(train())
