#!/usr/bin/env python
"""Train every run of a sweep file's grid on Ray: python scripts/sweep.py configs/sweep_methods.yaml

A local Ray is started in this process; --address auto (or HOST:PORT) uses a running cluster.
Rerunning the same command resumes unfinished runs and skips finished ones.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    from agent.cli import sweep_main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing: nothing was started
    print("Interrupted while starting: nothing was written.", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(sweep_main())
