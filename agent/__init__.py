"""The learning parts: config, networks, replay, DQN, Fisher, consolidation, probe, checkpoints, the trainer."""

import os as _os

# torch's OpenMP threads spin while they wait for work. On a machine where other processes
# are busy, the spinning threads steal the cores the working ones need: one update fell from
# 17 to 0.9 per second on 2 cores (scripts/bench.py, "threads" rows). Passive waiting costs
# nothing measurable on a quiet machine. OpenMP reads this once, when torch is first imported,
# so it only takes effect if `agent` is imported before torch; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
