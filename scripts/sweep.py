#!/usr/bin/env python
"""Train every run of a sweep file's grid on Ray: python scripts/sweep.py configs/sweep_methods.yaml

A local Ray is started in this process; --address auto (or HOST:PORT) uses a running cluster.
Rerunning the same command resumes unfinished runs and skips finished ones.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.entry import sweep  # noqa: E402  (light: Ctrl-C while the rest loads is one line)

if __name__ == "__main__":
    sys.exit(sweep())
