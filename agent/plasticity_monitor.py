"""When plasticity is measured and restored during training: the loop's one interface to it.

The loop (agent/trainer.py) and the switch (agent/switch.py) call four moments:

- `after_step(step, advanced, ...)`: every `plasticity.every` agent steps, the diagnostics of
  agent/plasticity.py on `plasticity.states` held-out states sampled from the current task's replay;
- `after_updates(...)`: with `plasticity.method: redo`, ReDo's recycling at the first update past each
  multiple of `redo_every`, scored on a replayed batch of `dqn.batch_size` states;
- `at_switch(...)`, once the task being left is consolidated: the diagnostics on that task's states;
- `before_next_task(...)`, after the switch's milestone and before the next task trains (never after the
  run's last task): `shrink_perturb` or `reset` when configured, so the anchor, the milestone and the
  evaluation at the switch all hold the network as it left the task.

The held-out states come from their own random stream (derived from the run's seed and the step),
so the diagnostics change nothing in training: a run with them is the run without them, plus a
record. Churn compares the network now with the network at the previous measurement on that
measurement's states, which (with the initial weights) are part of the checkpoint: a resumed run
writes the rows it would have written. The methods draw from the run's own streams (they are part
of the run they change).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from agent.config import TrainConfig, crossed
from agent.plasticity import churn, diagnose, initial_weights
from agent.plasticity_methods import recycle_dormant, reset_last_layers, shrink_and_perturb
from agent.record import RunRecord
from agent.replay import FrameReplay
from envs import derive_seed

HELD_OUT_STREAM = 6007  # the diagnostics' own random stream, beside the run's


class PlasticityMonitor:
    def __init__(self, config: TrainConfig, network: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device):
        self.config, self.seed = config.plasticity, config.seed
        self.redo_states = config.dqn.batch_size  # ReDo scores units on a replayed batch, as the update sees
        self.network, self.optimizer, self.device = network, optimizer, device
        self.initial: dict[str, torch.Tensor] | None = initial_weights(network)  # None: unknown (old checkpoint)
        self.previous_states: torch.Tensor | None = None  # the last measurement's states (uint8, CPU)
        self.previous_q: torch.Tensor | None = None  # and the Q-values on them then
        self.last_step = -1  # the step of the last measurement

    # ---------------------------------------------------------------- the loop's moments
    def after_step(self, step: int, advanced: int, visit: int, task: str, replay: FrameReplay,
                   record: RunRecord) -> None:
        if crossed(step, advanced, self.config.every) and step != self.last_step:
            self.measure(step, visit, task, "every", replay, record)  # (unless a switch measured this step)

    def after_updates(self, updates: int, new_updates: int, replay: FrameReplay, rng: np.random.Generator,
                      step: int, record: RunRecord) -> None:
        cfg = self.config
        if cfg.method != "redo" or not crossed(updates, new_updates, cfg.redo_every):
            return
        states = torch.from_numpy(replay.sample_states(self.redo_states, rng)).to(self.device)
        recycled = recycle_dormant(self.network, self.optimizer, states, cfg.redo_tau)
        record.plasticity_method(step, "redo", {f"recycled/{name}": count for name, count in recycled.items()})

    def at_switch(self, step: int, visit: int, task: str, replay: FrameReplay, record: RunRecord) -> None:
        """The diagnostics on the task being left (its anchor taken)."""
        if self.config.every and step != self.last_step:  # (a visit's last step may have been measured already)
            self.measure(step, visit, task, "switch", replay, record)

    def before_next_task(self, step: int, record: RunRecord) -> None:
        """shrink_perturb or reset, once the task left is recorded (its anchor and milestone hold the network
        as it left it) and before the next one trains; never after the last task of the run."""
        cfg = self.config
        if cfg.method == "shrink_perturb":
            shrink_and_perturb(self.network, cfg.shrink, cfg.perturb)
            record.plasticity_method(step, "shrink_perturb", {"shrink": cfg.shrink, "perturb": cfg.perturb})
        elif cfg.method == "reset":
            reset = reset_last_layers(self.network, self.optimizer, cfg.reset_layers)
            record.plasticity_method(step, "reset", {"layers": len(reset)})

    # ---------------------------------------------------------------- measuring
    def measure(self, step: int, visit: int, task: str, event: str, replay: FrameReplay,
                record: RunRecord) -> dict[str, float] | None:
        """The diagnostics now, written to the record; None when the task's replay is still empty."""
        if len(replay) == 0:
            return None
        rng = np.random.default_rng(derive_seed(self.seed, step, HELD_OUT_STREAM))
        states = torch.from_numpy(replay.sample_states(self.config.states, rng))
        values, q_values = diagnose(self.network, states.to(self.device), self._initial(), None, self.config.taus)
        if self.previous_states is not None:  # the previous measurement's states, through the network now
            with torch.no_grad():
                q_now = self.network(self.previous_states.to(self.device)).float()
            values.update({f"churn/{name}": value
                           for name, value in churn(self.previous_q.to(self.device), q_now).items()})
        if self.initial is None:
            values.update({name: math.nan for name in values if name.startswith("weight_distance/")})
        self.previous_states, self.previous_q, self.last_step = states, q_values.cpu(), step
        record.plasticity(step, visit, task, event, values)
        return values

    def _initial(self) -> dict[str, torch.Tensor]:
        return self.initial if self.initial is not None else initial_weights(self.network)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"initial": self.initial, "previous_states": self.previous_states, "previous_q": self.previous_q,
                "last_step": self.last_step}

    def load_state_dict(self, state: dict | None) -> None:
        """A checkpoint's monitor; one written before plasticity existed has none (distances unknown)."""
        state = state or {"initial": None, "previous_states": None, "previous_q": None, "last_step": -1}
        self.initial = state["initial"]
        self.previous_states, self.previous_q = state["previous_states"], state["previous_q"]
        self.last_step = state["last_step"]
