"""The training loop: one DQN agent through a schedule of Atari games.

act -> step -> store -> (every `train_every` steps) sample -> loss -> update,
and at each game switch: evaluate -> consolidate -> snapshot for the retention
probe -> milestone and checkpoint -> new envs. Replay buffers, anchors and task
parameters are keyed by the current task (agent/tasks.py): the game, or with
`task_inference: fmn` the inferred context, whose changes are then the switches that
consolidate (the schedule's switches only change the envs). The one place where the environments
meet the learner (evaluation plays episodes on its own, in agent/evaluation.py).

A stop signal (SIGTERM, SIGINT) is acted on within one vector step, one evaluation
step or one Fisher minibatch: the work in progress is abandoned, the last consistent
state is checkpointed (what was abandoned is owed and redone on resume) and the run
exits with EXIT_INTERRUPTED.
"""

from __future__ import annotations

import copy
import functools
import sys
import time
from pathlib import Path

import torch

from agent import rundir
from agent.actor import Actor
from agent.checkpoint import CheckpointError
from agent.config import TrainConfig, crossed, resolve_device
from agent.console import Console
from agent.dqn import choose_precision
from agent.evaluation import evaluate_games
from agent.graphed import GraphedUpdate, eager_update
from agent.record import RunRecord, Window
from agent.replay import FrameReplay
from agent.state import Progress, RunState
from agent.stopping import (
    EXIT_BAD_INPUT,
    EXIT_CHECKPOINT_FAILED,
    EXIT_DONE,
    EXIT_INTERRUPTED,
    Interrupted,
    StopSignals,
    check_finite,
    ending,
)
from agent.switch import Switch
from envs import derive_seed


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, checkpoint: dict | None = None):
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        precision, why = choose_precision(config.dqn.precision, self.device.type)
        if precision != config.dqn.precision:  # config.yaml and checkpoints record the precision used
            config = config.model_copy(deep=True)
            config.dqn.precision = precision
            print(f"dqn.precision: {precision} ({why})", file=sys.stderr)
        self.config = config
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        graphed = config.dqn.cuda_graph and self.device.type == "cuda"
        self.state = RunState(config, self.device, capturable=graphed)
        self.resumed = checkpoint is not None
        if checkpoint is not None:
            self.state.load_state_dict(checkpoint)
        # The parts the loop works with, by their short names (the state owns them).
        state = self.state
        self.network, self.learner, self.consolidator = state.network, state.learner, state.consolidator
        self.probe, self.tasks, self.replays, self.progress = state.probe, state.tasks, state.replays, state.progress
        self.visits = state.visits
        self.rng = state.random.numpy
        self.update = GraphedUpdate(self.learner, self.consolidator) if graphed else \
            functools.partial(eager_update, self.learner, self.consolidator)
        self.stop = StopSignals()
        self.switch = Switch(state, self.run_dir, poll=self.stop.check)
        self._saved: Progress | None = copy.deepcopy(self.progress) if self.resumed else None
        self._session_start = time.monotonic()
        self._session_seconds_saved = 0.0
        self.record: RunRecord | None = None  # TensorBoard, the CSV files and the console, while training
        self._window = Window(self.progress.global_step)

    @property
    def finished(self) -> bool:
        return self.state.finished

    # ---------------------------------------------------------------- the loop
    def train(self) -> int:
        """Run the schedule to its end; returns an exit code (EXIT_*)."""
        if self.finished:
            print(f"The run in {self.run_dir} already finished its schedule ({self.progress.global_step:,} steps); "
                  "nothing was changed. Raise schedule.cycles to continue it.", file=sys.stderr)
            return EXIT_DONE
        try:
            writer_lock = rundir.hold_run(self.run_dir)
        except rundir.RunBusy as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as exc:
            print(f"error: cannot write in the run directory {self.run_dir} ({exc.strerror or exc}); choose another "
                  "--run-dir, or make it writable.", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            with self.stop.installed():
                self.record = RunRecord(self.run_dir, Console(self.state.total_steps(), self.progress.global_step,
                                                              bar=self.config.logging.progress_bar))
                return self._train()
        finally:
            writer_lock.release()

    def _train(self) -> int:
        """The schedule from where the run is; every way it can end gives an exit code and a message."""
        try:
            self._open_record()
            steps_per_visit = self.config.schedule.steps_per_visit
            while not self.finished:
                game = self.visits[self.progress.visit]
                if self.progress.pending_switch:  # a stop interrupted a context switch: finish it first
                    self.switch.change_context(game, self.record)
                self._evaluate_if_due()  # the run's start, or an evaluation a stop abandoned
                if not self.progress.visit_done:
                    if self.progress.step_in_visit < steps_per_visit:
                        self._run_visit(game)
                    else:  # resumed with a shorter schedule.steps_per_visit: this visit is over
                        self._end_visit()
                self._evaluate_if_due()  # the score of every game at the end of this visit
                self._switch_from(game)
            self.record.summary(self.progress.global_step, self.visits, len(self.config.schedule.games),
                                self.progress.updates, self.progress.seconds,
                                self._session_seconds() if self.resumed else None, self.tasks.inferred)
            return EXIT_DONE
        except Interrupted:
            try:
                self.save(unless_saved=True)
            except CheckpointError as exc:
                self.record.line(f"Stopped by signal {self.stop.received}, but the checkpoint failed: {exc}\n"
                                  f"Resume from the previous one with: python scripts/train.py --resume {self.run_dir}")
                return EXIT_CHECKPOINT_FAILED
            self.record.line(f"Stopped by signal {self.stop.received} at step {self.progress.global_step:,}; "
                              f"checkpoint written. Continue with: python scripts/train.py --resume {self.run_dir}")
            return EXIT_INTERRUPTED
        except Exception as exc:
            code, message = ending(exc, self.run_dir, self.progress.global_step)
            self.record.line(message)
            return code
        finally:
            self.record.close()

    def _open_record(self) -> None:
        """Make the run directory agree with the state being trained from, then open the writer."""
        step = self.progress.global_step
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resumed:
            rundir.cut_back(self.run_dir, self.state.record_sizes, step)
        rundir.write_config(self.run_dir, self.config.to_dict(), step)
        rundir.write_schedule(self.run_dir, self.state.schedule_record(), step)
        if not self.resumed:
            self.save()  # from now on the run can be resumed, even if killed during its first evaluation
        sizes = self.state.record_sizes
        first_file = sizes is not None and not any(name.startswith("tb/") for name in sizes)
        self.record.open(self.config.to_dict(), first_file)

    def _run_visit(self, game: str) -> None:
        cfg, progress = self.config, self.progress
        with self.stop.while_envs_build(cfg.env.num_envs, f"[step {progress.global_step:,}] creating "
                                        f"{cfg.env.num_envs} {game} envs", self.record.line):
            actor = Actor(game, cfg.env.num_envs, cfg.env.atari_settings(), self.network, self.rng,
                          backend=cfg.env.backend, num_threads=cfg.env.num_threads,
                          life_loss_terminal=cfg.env.life_loss_terminal, bf16=cfg.dqn.precision == "bf16")
        n, overlap = actor.num_envs, cfg.env.overlap
        self.switch.begin_visit(game, self.record)
        replay = self.state.replay(progress.task)
        replay.close_episodes()  # new envs: no episode continues from the buffer's last one
        game_index = cfg.schedule.games.index(game)
        self._window.returns.clear()  # the bar shows this game's returns, not the previous game's
        self.record.visit(game, progress.visit, len(self.visits))
        try:
            # A resumed visit gets fresh episodes from its own seed (ale-py cannot restore emulator state).
            with self.stop.while_envs_build(n, f"[step {progress.global_step:,}] resetting {n} {game} envs",
                                            self.record.line):
                actor.reset(derive_seed(cfg.seed, progress.visit, progress.step_in_visit))
            while progress.step_in_visit < cfg.schedule.steps_per_visit:
                self.stop.check()
                epsilon = self.state.epsilon(game)
                actor.send(actor.act(epsilon))
                progress.step_in_visit += n
                progress.global_step += n
                progress.game_steps[game] = progress.game_steps.get(game, 0) + n
                progress.task_steps[progress.task] = progress.task_steps.get(progress.task, 0) + n
                if overlap:  # the updates run while the emulators step; they sample the replay as it was
                    self._learn(progress.task, replay, n)
                step = actor.recv()
                replay.add(step.obs, step.actions, step.rewards, step.dones, step.episode_over, step.next_obs,
                           mask=step.real)
                if len(step.ended_returns):
                    self.record.episodes(progress.global_step, game, step.ended_returns, step.ended_lengths)
                    self._window.returns.extend(step.ended_returns.tolist())
                if not overlap:
                    self._learn(progress.task, replay, n)
                decided = self.tasks.observe(step.next_obs[:, -1])  # None in labels mode
                if decided is not None and decided != progress.task:
                    progress.pending_switch = decided
                    self.switch.change_context(game, self.record)
                    replay = self.state.replay(progress.task)

                step_now = progress.global_step
                logged = crossed(step_now, n, cfg.logging.log_every)
                if logged:
                    self._log_scalars(epsilon, game_index)
                self.record.advance(n, self._window.postfix() if logged else None)
                if crossed(step_now, n, cfg.consolidation.probe_every):
                    self.record.retention(step_now, self.probe.measure(self.network, current_game=progress.task))
                self.state.plasticity.after_step(step_now, n, progress.visit, progress.task, replay, self.record)
                if progress.step_in_visit >= cfg.schedule.steps_per_visit:
                    self._end_visit()
                    break
                if crossed(step_now, n, cfg.eval.every):
                    progress.eval_due = True
                    self._evaluate_if_due()
                if crossed(step_now, n, cfg.checkpoint.every):
                    self.save()
        finally:
            actor.close()

    def _end_visit(self) -> None:
        self.progress.visit_done = True
        self.progress.eval_due = True  # the end-of-visit evaluation, before the switch

    def _learn(self, task: str, replay: FrameReplay, new_steps: int) -> None:
        dqn, progress = self.config.dqn, self.progress
        if len(replay) < max(dqn.learning_starts, 1) and not replay.full:
            return
        progress.update_credit += new_steps / dqn.train_every
        before = progress.updates
        while progress.update_credit >= 1:
            progress.update_credit -= 1
            batch = replay.sample(dqn.batch_size, self.rng, self.device)
            self._window.add_update(*self.update(batch, task))
            progress.updates += 1
        self.state.plasticity.after_updates(progress.updates, progress.updates - before, replay, self.rng,
                                            progress.global_step, self.record)
        if progress.global_step - progress.last_target_sync >= dqn.target_update_every:
            self.learner.sync_target()
            progress.last_target_sync = progress.global_step

    def _switch_from(self, game: str) -> None:
        """Consolidate the game being left, snapshot it for the probe, keep a milestone, checkpoint.

        With inferred contexts the agent is not told of this switch: only the envs change here."""
        progress = self.progress
        if not self.tasks.inferred:
            self.switch.leave(game, self.record)
        progress.visit += 1
        progress.step_in_visit = 0
        progress.visit_done = False
        self.switch.milestone(game)  # before the checkpoint: a kill in between redoes both
        if not self.finished and not self.tasks.inferred:  # (with fmn, a change of context is the switch)
            self.state.plasticity.before_next_task(progress.global_step, self.record)
        self.save()

    def _log_scalars(self, epsilon: float, game_index: int) -> None:
        step = self.progress.global_step
        stats = self._window.flush(step)
        check_finite(stats, step)
        self.record.training(step, stats, epsilon, game_index, self.progress.updates,
                             len(self.consolidator.active_anchors(self.progress.task)))

    def _evaluate_if_due(self) -> None:
        """Play every game of the schedule with its own envs and RNG; log and append to eval.csv.

        A stop signal abandons it before anything is written: it stays due and is redone on resume."""
        cfg, progress = self.config.eval, self.progress
        if not progress.eval_due:
            return
        if cfg.episodes == 0:
            progress.eval_due = False
            return
        games = self.config.schedule.games
        trained = self.visits[progress.visit] if not self.finished else ""
        on_episode = self.record.evaluating(progress.global_step, games, cfg.episodes)
        # The seed depends on the step only through SeedSequence: valid at any step, for any config seed.
        results = evaluate_games(self.network, games, cfg.episodes, cfg.epsilon,
                                 seed=derive_seed(self.config.seed, progress.global_step, 7919),
                                 settings=self.config.env.atari_settings(cfg.max_episode_frames),
                                 num_envs=cfg.num_envs, on_episode=on_episode, poll=self.stop.check,
                                 task_of=self.tasks.task_of)
        self.record.evaluation(progress.global_step, progress.visit, trained, results)
        progress.eval_due = False

    def _session_seconds(self) -> float:
        return time.monotonic() - self._session_start

    # ---------------------------------------------------------------- state
    def save(self, unless_saved: bool = False) -> Path | None:
        """Checkpoint the current state; everything logged so far is flushed first (it belongs to it)."""
        if unless_saved and self._saved == self.progress:
            return None
        if self.record is not None:
            self.record.flush()
        self.progress.seconds += self._session_seconds() - self._session_seconds_saved
        self._session_seconds_saved = self._session_seconds()
        path = self.state.save(self.run_dir)
        self._saved = copy.deepcopy(self.progress)
        return path
