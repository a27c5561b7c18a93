"""What happens when a task is left: its anchor, its retention-probe snapshot, and a milestone.

The loop (agent/trainer.py) says when: at a switch of the schedule's game (labels mode), or when
task inference decides another context (`task_inference: fmn`). This module says what:

- `leave(key)`: the consolidator estimates the importance of the network's parameters on states
  replayed from the task being left and stores its anchor; the retention probe keeps the
  network's outputs on a sample of those states. A stop signal during the estimate restores the
  random streams as they were, so the resumed run redoes the same estimate exactly.
- then the plasticity diagnostics on the task being left, and a method that acts at switches
  (`plasticity.method`: shrink_perturb, reset; agent/plasticity_monitor.py).
- `milestone(game)`: the network and the anchor just set, kept for ever in `milestones/`.
- `begin_visit(game)` and `change_context(game)`: which task key the agent trains now (the game,
  or the inferred context), told to the learner (per-task gains and biases) and to contexts.csv.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from agent.checkpoint import save_checkpoint
from agent.dqn import per_sample_td_loss
from agent.record import RunRecord
from agent.replay import FrameReplay
from agent.state import RunState
from agent.stopping import Interrupted


class Switch:
    def __init__(self, state: RunState, run_dir: Path, poll: Callable[[], None]):
        self.state, self.run_dir, self.poll = state, Path(run_dir), poll

    def begin_visit(self, game: str, record: RunRecord) -> None:
        """The task a visit trains: its game, or with inferred contexts the context in force (the agent is
        not told of the schedule's switch; contexts.csv notes it, for measurement only)."""
        progress, tasks = self.state.progress, self.state.tasks
        if tasks.inferred:
            if not progress.task:
                progress.task = tasks.first_key(game)
            if progress.visit_logged != progress.visit:
                self._log_context(game, progress.task, "visit", record)
                progress.visit_logged = progress.visit
        elif progress.task != game:
            progress.task, progress.task_since = game, progress.global_step
        self.state.learner.set_task(tasks.index(progress.task))

    def change_context(self, game: str, record: RunRecord) -> None:
        """Task inference decided another context (`progress.pending_switch`): leave the one in force for it."""
        state, progress = self.state, self.state.progress
        old, new = progress.task, progress.pending_switch
        self.leave(old, record)
        state.plasticity.before_next_task(progress.global_step, record)
        if old in state.replays:
            state.replays[old].close_episodes()  # the episodes in progress continue in the new context's buffer
        event = "switch" if new in progress.task_steps else "new"
        progress.task, progress.task_since, progress.pending_switch = new, progress.global_step, ""
        state.learner.set_task(state.tasks.index(new))
        self._log_context(game, new, event, record)
        record.context_changed(progress.global_step, game, old, new, event)

    def _log_context(self, game: str, key: str, event: str, record: RunRecord) -> None:
        progress = self.state.progress
        record.context(progress.global_step, progress.visit, game, key, event, self.state.tasks.num_contexts)

    def leave(self, key: str, record: RunRecord) -> None:
        """The anchor of task `key` (a game or a context), which is being left, and its probe snapshot."""
        state, cons = self.state, self.state.config.consolidation
        replay = state.replays.get(key)
        if replay is None or len(replay) == 0:
            return
        started = time.perf_counter()
        step = state.progress.global_step
        record.consolidating(step, key)
        random_before = state.random.state_dict()
        try:
            stats = self._consolidate(key, replay)
        except Interrupted:
            state.random.load_state_dict(random_before)  # the resumed run redoes this estimate exactly
            raise
        record.consolidated(step, key, stats, time.perf_counter() - started)
        if cons.probe_states:
            states = torch.from_numpy(replay.sample_states(cons.probe_states, state.random.numpy))
            state.probe.snapshot(key, state.network, states)
        state.plasticity.at_switch(step, state.progress.visit, key, replay, record)

    def _consolidate(self, key: str, replay: FrameReplay) -> dict[str, float]:
        state, cons = self.state, self.state.config.consolidation
        states, td_losses = None, None
        if state.consolidator.needs_states:
            batch = replay.sample(cons.fisher_batches * cons.fisher_batch_size, state.random.numpy, state.device)
            states = batch.obs
            if state.consolidator.estimator == "empirical":  # the only one that needs TD targets
                targets = []
                for chunk in batch.chunks(256):
                    self.poll()
                    targets.append(state.learner.targets(chunk))
                targets = torch.cat(targets)

                def td_losses(outputs, rows):
                    return per_sample_td_loss(outputs, batch.actions[rows], targets[rows],
                                              state.config.dqn.huber_delta)

        return state.consolidator.consolidate(key, state.network, states, state.steps_on(key), td_losses,
                                              state.random.fisher, poll=self.poll)

    def milestone(self, game: str) -> Path:
        """Keep the switch's small record; a resumed run that redoes the switch writes the same one again."""
        return save_checkpoint(self.run_dir / "milestones", self.state.progress.global_step,
                               self.state.milestone_dict(game), keep=None, replace=True)
