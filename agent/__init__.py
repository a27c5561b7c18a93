"""The learning parts: config, networks, replay, DQN, Fisher, consolidation, probe, checkpoints, the trainer."""

import os as _os
import sys as _sys
import warnings as _warnings

# torch's OpenMP threads spin while they wait for work. On a machine where other processes
# are busy, the spinning threads steal the cores the working ones need: an update ran 1.5-1.7x
# faster with passive waiting beside a busy process on 2 cores (scripts/bench.py, "threads"),
# and it costs nothing measurable on a quiet machine. OpenMP reads this once, when torch is
# first imported, so it only takes effect if `agent` is imported before torch; a user's own
# setting wins.
if "torch" in _sys.modules and "OMP_WAIT_POLICY" not in _os.environ:
    _warnings.warn("torch was imported before agent, so its OpenMP threads spin while they wait: training can "
                   "slow down many times on a busy machine. Import agent first, or set OMP_WAIT_POLICY=PASSIVE "
                   "in the environment.", stacklevel=2)
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
