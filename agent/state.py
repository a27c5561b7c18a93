"""What a checkpoint holds: where the run is, its random streams and the agent's stateful parts.

`RunState` builds the agent's parts from the config (network, learner, consolidator, retention
probe, plasticity monitor, task keys, one replay buffer per task) and saves and restores them as one
(`state_dict` / `load_state_dict`), in the spirit of Dopamine's checkpointer: the loop in
agent/trainer.py never lists them. Whether a config may resume a checkpoint is decided beside
it, in agent/resume.py; writing the files atomically is agent/checkpoint.py's job.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from agent import rundir
from agent.checkpoint import save_checkpoint
from agent.config import TrainConfig
from agent.consolidation import ONLINE, Consolidator
from agent.dqn import DQNLearner, linear_epsilon
from agent.networks import QNetwork
from agent.plasticity_monitor import PlasticityMonitor
from agent.probe import RetentionProbe
from agent.replay import FrameReplay
from agent.tasks import Tasks
from envs import NUM_ACTIONS


@dataclasses.dataclass
class Progress:
    """Where the run is in its schedule; everything needed to continue it."""

    visit: int = 0  # index into the list of (cycle, game) visits
    step_in_visit: int = 0
    global_step: int = 0
    updates: int = 0
    update_credit: float = 0.0
    last_target_sync: int = 0
    game_steps: dict[str, int] = dataclasses.field(default_factory=dict)
    eval_due: bool = False  # an evaluation is owed at global_step (not yet run, or abandoned by a stop)
    visit_done: bool = False  # the visit's steps are done: its evaluation, consolidation and switch remain
    seconds: float = 0.0  # training wall time over all sessions of the run, up to the last checkpoint
    task: str = ""  # the current task key: the game, or the inferred context (agent/tasks.py)
    task_steps: dict[str, int] = dataclasses.field(default_factory=dict)  # agent steps per task key
    task_since: int = 0  # global step at which the current task key began
    pending_switch: str = ""  # fmn: the context decided, whose switch (consolidation) is not done yet
    visit_logged: int = -1  # fmn: the last visit whose true switch is in contexts.csv


class RandomStreams:
    """Every random stream a run draws from, seeded from the config's seed and saved as one.

    Python's and torch's global generators (network initialisation, torch's sampling), NumPy's
    generator (acting, replay sampling) and the Fisher estimate's own torch generator."""

    def __init__(self, seed: int):
        random.seed(seed)
        torch.manual_seed(seed)
        self.numpy = np.random.default_rng(seed)
        self.fisher = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        state = self.numpy.bit_generator.state
        numpy = {"bit_generator": state["bit_generator"], "state": str(state["state"]["state"]),
                 "inc": str(state["state"]["inc"]), "has_uint32": state["has_uint32"],
                 "uinteger": state["uinteger"]}  # 128-bit integers as text: checkpoints hold plain types
        return {"python": list(random.getstate()[1]), "numpy": numpy,
                "torch": torch.get_rng_state(), "fisher": self.fisher.get_state()}

    def load_state_dict(self, state: dict) -> None:
        random.setstate((3, tuple(state["python"]), None))
        saved = state["numpy"]
        self.numpy.bit_generator.state = {"bit_generator": saved["bit_generator"],
                                          "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
                                          "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}
        torch.set_rng_state(state["torch"])
        self.fisher.set_state(state["fisher"])


class RunState:
    """The agent's stateful parts and the run's progress, built from a config on a device."""

    def __init__(self, config: TrainConfig, device: torch.device, capturable: bool = False):
        self.config, self.device = config, device
        self.random = RandomStreams(config.seed)  # before the network: its initial weights come from it
        self.tasks = Tasks(config)
        self.network = QNetwork(NUM_ACTIONS, config.network.architecture,
                                num_tasks=self.tasks.num_tasks).to(device)
        dqn, cons = config.dqn, config.consolidation
        self.learner = DQNLearner(self.network, dqn.learning_rate, dqn.adam_eps, dqn.gamma, dqn.double_dqn,
                                  dqn.huber_delta, dqn.max_grad_norm, dqn.clip_rewards, dqn.precision,
                                  capturable=capturable)
        self.consolidator = Consolidator(cons.method, cons.lambda_, cons.fisher_estimator, cons.normalize,
                                         cons.online_gamma, cons.min_steps_to_protect, cons.fisher_batch_size,
                                         cons.full_strength_steps)
        self.probe = RetentionProbe()
        self.plasticity = PlasticityMonitor(config, self.network, self.learner.optimizer, device)
        self.replays: dict[str, FrameReplay] = {}
        self.progress = Progress(eval_due=True)  # a new run owes the untrained network's scores (step 0)
        self.visits = config.schedule.visits(config.seed)  # the game of each (cycle, game) visit, in order
        # Bytes of eval.csv and the event files the loaded checkpoint covers: {} for a new run,
        # None for a checkpoint that predates this record.
        self.record_sizes: dict[str, int] | None = {}

    def replay(self, key: str) -> FrameReplay:
        """The replay buffer of task `key`, made on first use."""
        if key not in self.replays:
            on_device = self.config.replay.storage == "device" and self.device.type != "cpu"
            self.replays[key] = FrameReplay(self.config.replay.capacity_per_game, self.config.env.num_envs,
                                            device=self.device if on_device else None)
        return self.replays[key]

    def steps_on(self, key: str) -> int:
        """Agent steps trained on task `key` (checkpoints before task keys counted games only)."""
        progress = self.progress
        return progress.task_steps.get(key, 0) if self.tasks.inferred else progress.game_steps.get(key, 0)

    @property
    def finished(self) -> bool:
        return self.progress.visit >= len(self.visits)

    def epsilon(self, game: str) -> float:
        """Epsilon from the timer epsilon.restart names; with inferred contexts a visit is the time since the
        context began, a game the context's steps (the agent does not know the schedule)."""
        eps, progress = self.config.epsilon, self.progress
        if self.tasks.inferred:
            visit, game_steps = progress.global_step - progress.task_since, self.steps_on(progress.task)
        else:
            visit, game_steps = progress.step_in_visit, progress.game_steps.get(game, 0)
        timer = {"visit": visit, "game": game_steps, "never": progress.global_step}[eps.restart]
        return linear_epsilon(timer, eps.start, eps.end, eps.decay_steps)

    def total_steps(self) -> int:
        """Agent steps at the end of the schedule (steps_per_visit may have changed on resume)."""
        progress, per_visit = self.progress, self.config.schedule.steps_per_visit
        in_this_visit = 0 if progress.visit_done else max(per_visit - progress.step_in_visit, 0)
        later_visits = max(len(self.visits) - progress.visit - 1, 0)
        return progress.global_step + in_this_visit + later_visits * per_visit

    def schedule_record(self) -> dict:
        """schedule.json: which game each visit trains (eval.csv's `visit` column indexes `visits`)."""
        schedule = self.config.schedule
        return {"order": schedule.order, "seed": self.config.seed, "games": schedule.games,
                "cycles": schedule.cycles, "visits": self.visits}

    def state_dict(self) -> dict:
        state = {
            "config": self.config.to_dict(),
            "progress": dataclasses.asdict(self.progress),
            "learner": self.learner.state_dict(),
            "consolidator": self.consolidator.state_dict(),
            "probe": self.probe.state_dict(),
            "tasks": self.tasks.state_dict(),
            "plasticity": self.plasticity.state_dict(),
            "rng": self.random.state_dict(),
        }
        if self.config.checkpoint.replay:
            state["replay"] = {key: replay.state_dict() for key, replay in self.replays.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint (read on the CPU) onto this state's device, whatever device wrote it."""
        self.progress = Progress(**state["progress"])
        self.learner.load_state_dict(state["learner"])
        self.consolidator.load_state_dict(state["consolidator"], self.device)
        self.probe.load_state_dict(state["probe"])
        self.tasks.load_state_dict(state.get("tasks", {}))
        self.plasticity.load_state_dict(state.get("plasticity"))
        if self.progress.task:  # a switch's consolidation may come before any step: the Fisher needs the task
            self.learner.set_task(self.tasks.index(self.progress.task))
        self.random.load_state_dict(state["rng"])
        self.record_sizes = state.get("record")
        for key, replay_state in state.get("replay", {}).items():
            self.replay(key).load_state_dict(replay_state)

    def save(self, run_dir: Path) -> Path:
        """A checkpoint of the state now, with the sizes of the record it covers (flushed before)."""
        state = self.state_dict()
        state["record"] = rundir.record_sizes(run_dir)
        return save_checkpoint(run_dir / "checkpoints", self.progress.global_step, state,
                               self.config.checkpoint.keep)

    def milestone_dict(self, game: str) -> dict:
        """A switch's small record, kept for ever: the network and the anchor just set, no replay."""
        anchors = self.consolidator.anchors
        # With inferred contexts the anchors are keyed by context: keep the newest (dicts keep their order).
        key = game if game in anchors else ONLINE if ONLINE in anchors else next(reversed(anchors), None)
        anchor = anchors.get(key) if key is not None else None
        return {"config": self.config.to_dict(), "progress": dataclasses.asdict(self.progress),
                "learner": {"online": self.learner.state_dict()["online"]}, "left_game": game,
                "anchor_key": key or "", "tasks": self.tasks.state_dict(),
                "anchor_importance": anchor["importance"] if anchor else {}}
