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

import contextlib
import copy
import dataclasses
import functools
import math
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from agent import rundir
from agent.actor import Actor
from agent.checkpoint import CheckpointError, list_checkpoints, save_checkpoint, step_of
from agent.config import TrainConfig, resolve_device
from agent.console import Console
from agent.consolidation import ONLINE, Consolidator
from agent.dqn import DQNLearner, choose_precision, linear_epsilon, per_sample_td_loss
from agent.evaluation import evaluate_games
from agent.graphed import GraphedUpdate, eager_update
from agent.networks import QNetwork
from agent.probe import RetentionProbe
from agent.record import RunRecord, Window
from agent.replay import FrameReplay
from agent.tasks import Tasks
from envs import NUM_ACTIONS, derive_seed

SLOW_ENV_BUILD = 64  # envs from which building them takes long enough (10 s) to let a stop signal end it at once
EXIT_DONE, EXIT_CRASHED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_DIVERGED, EXIT_CHECKPOINT_FAILED = 0, 1, 2, 3, 4, 5



class TrainingDiverged(RuntimeError):
    """Non-finite loss or Q-values."""


class Interrupted(Exception):
    """A stop signal arrived: abandon the work in progress."""


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
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.fisher_generator = torch.Generator().manual_seed(config.seed)

        self.tasks = Tasks(config)
        self.network = QNetwork(NUM_ACTIONS, config.network.architecture,
                                num_tasks=self.tasks.num_tasks).to(self.device)
        dqn = config.dqn
        graphed = dqn.cuda_graph and self.device.type == "cuda"
        self.learner = DQNLearner(self.network, dqn.learning_rate, dqn.adam_eps, dqn.gamma, dqn.double_dqn,
                                  dqn.huber_delta, dqn.max_grad_norm, dqn.clip_rewards, dqn.precision,
                                  capturable=graphed)
        cons = config.consolidation
        self.consolidator = Consolidator(cons.method, cons.lambda_, cons.fisher_estimator, cons.normalize,
                                         cons.online_gamma, cons.min_steps_to_protect, cons.fisher_batch_size)
        self.update = GraphedUpdate(self.learner, self.consolidator) if graphed else \
            functools.partial(eager_update, self.learner, self.consolidator)
        self.probe = RetentionProbe()
        self.replays: dict[str, FrameReplay] = {}
        self.progress = Progress(eval_due=True)  # a new run owes the untrained network's scores (step 0)
        self.visits = config.schedule.visits(config.seed)
        self.settings = config.env.atari_settings()
        self.resumed = checkpoint is not None
        self._record: dict[str, int] | None = {}  # bytes of eval.csv and event files the checkpoint covers
        if checkpoint is not None:
            self.load_state_dict(checkpoint)
        self._stop_signal: str | None = None  # the name of the signal that stopped the run
        self._saved: Progress | None = copy.deepcopy(self.progress) if self.resumed else None
        self._session_start = time.monotonic()
        self._session_seconds_saved = 0.0
        self.record: RunRecord | None = None  # TensorBoard, the CSV files and the console, while training
        self._window = Window(self.progress.global_step)

    @property
    def finished(self) -> bool:
        return self.progress.visit >= len(self.visits)

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
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.record = RunRecord(self.run_dir, Console(self._total_steps(), self.progress.global_step,
                                                      bar=self.config.logging.progress_bar))
        try:
            self._open_record()
            steps_per_visit = self.config.schedule.steps_per_visit
            while not self.finished:
                game = self.visits[self.progress.visit]
                if self.progress.pending_switch:  # a stop interrupted a context switch: finish it first
                    self._change_context(game)
                self._evaluate_if_due()  # the run's start, or an evaluation a stop abandoned
                if not self.progress.visit_done:
                    if self.progress.step_in_visit < steps_per_visit:
                        self._run_visit(game)
                    else:  # resumed with a shorter schedule.steps_per_visit: this visit is over
                        self._end_visit()
                self._evaluate_if_due()  # the score of every game at the end of this visit
                self._switch_from(game)
            self._print_summary()
            return EXIT_DONE
        except Interrupted:
            try:
                self.save(unless_saved=True)
            except CheckpointError as exc:
                self.record.line(f"Stopped by signal {self._stop_signal}, but the checkpoint failed: {exc}\n"
                                  f"Resume from the previous one with: python scripts/train.py --resume {self.run_dir}")
                return EXIT_CHECKPOINT_FAILED
            self.record.line(f"Stopped by signal {self._stop_signal} at step {self.progress.global_step:,}; "
                              f"checkpoint written. Continue with: python scripts/train.py --resume {self.run_dir}")
            return EXIT_INTERRUPTED
        except TrainingDiverged as exc:
            self.record.line(f"{exc}\nThe last good checkpoint in {self.run_dir / 'checkpoints'} is kept. "
                              "Try a lower dqn.learning_rate, a lower consolidation.lambda, or dqn.max_grad_norm.")
            return EXIT_DIVERGED
        except CheckpointError as exc:
            self.record.line(f"{exc}\nStopped at step {self.progress.global_step:,}. Resume with: "
                              f"python scripts/train.py --resume {self.run_dir}")
            return EXIT_CHECKPOINT_FAILED
        except Exception as exc:  # a bug or a broken environment: say where the details are, keep the record
            log = self.run_dir / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
            try:
                log.write_text(traceback.format_exc())
            except OSError:
                log = "(could not be written: printed here)\n" + traceback.format_exc()
            self.record.line(f"error: unexpected {type(exc).__name__} at step {self.progress.global_step:,}: {exc}\n"
                              f"The traceback is in {log}; the checkpoints in {self.run_dir / 'checkpoints'} are "
                              f"intact. Please report it; resume with: python scripts/train.py --resume {self.run_dir}")
            return EXIT_CRASHED
        finally:
            self.record.close()
            writer_lock.release()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _open_record(self) -> None:
        """Make the run directory agree with the state being trained from, then open the writer."""
        step = self.progress.global_step
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resumed:
            if self._record is None:
                print("warning: this checkpoint predates the record of file sizes: points a killed run logged "
                      "after it may appear twice in TensorBoard and eval.csv.", file=sys.stderr)
            else:
                rundir.truncate_to(self.run_dir, self._record)  # what a killed run logged after its checkpoint
            for milestone in list_checkpoints(self.run_dir / "milestones"):
                if step_of(milestone) > step:  # switches that will be redone
                    milestone.unlink()
                    milestone.with_suffix(".done").unlink()
        rundir.write_config(self.run_dir, self.config.to_dict(), step)
        rundir.write_schedule(self.run_dir, self._schedule_record(), step)
        if not self.resumed:
            self.save()  # from now on the run can be resumed, even if killed during its first evaluation
        first_file = self._record is not None and not any(name.startswith("tb/") for name in self._record)
        self.record.open(self.config.to_dict(), first_file)

    def _run_visit(self, game: str) -> None:
        cfg, progress = self.config, self.progress
        with self._stoppable_at_once(f"creating {cfg.env.num_envs} {game} envs"):
            actor = Actor(game, cfg.env.num_envs, self.settings, self.network, self.rng, backend=cfg.env.backend,
                          num_threads=cfg.env.num_threads, life_loss_terminal=cfg.env.life_loss_terminal,
                          bf16=cfg.dqn.precision == "bf16")
        n, overlap = actor.num_envs, cfg.env.overlap
        if self.tasks.inferred:
            if not progress.task:
                progress.task = self.tasks.first_key(game)
            if progress.visit_logged != progress.visit:  # the true switch, for measurement only
                self._log_context(game, progress.task, "visit")
                progress.visit_logged = progress.visit
        else:
            if progress.task != game:
                progress.task, progress.task_since = game, progress.global_step
        self.learner.set_task(self.tasks.index(progress.task))
        replay = self._replay(progress.task)
        replay.close_episodes()  # new envs: no episode continues from the buffer's last one
        game_index = cfg.schedule.games.index(game)
        self._window.returns.clear()  # the bar shows this game's returns, not the previous game's
        self.record.visit(game, progress.visit, len(self.visits))
        try:
            # A resumed visit gets fresh episodes from its own seed (ale-py cannot restore emulator state).
            with self._stoppable_at_once(f"resetting {n} {game} envs"):
                actor.reset(derive_seed(cfg.seed, progress.visit, progress.step_in_visit))
            while progress.step_in_visit < cfg.schedule.steps_per_visit:
                self._check_stop()
                epsilon = self._epsilon(game)
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
                    self._log_episodes(game, step.ended_returns, step.ended_lengths)
                if not overlap:
                    self._learn(progress.task, replay, n)
                decided = self.tasks.observe(step.next_obs[0, -1])  # None in labels mode
                if decided is not None and decided != progress.task:
                    progress.pending_switch = decided
                    self._change_context(game)
                    replay = self._replay(progress.task)

                step_now = progress.global_step
                logged = _crossed(step_now, n, cfg.logging.log_every)
                if logged:
                    self._log_scalars(epsilon, game_index)
                self.record.advance(n, self._window.postfix() if logged else None)
                if _crossed(step_now, n, cfg.consolidation.probe_every):
                    self._log_retention(progress.task)
                if progress.step_in_visit >= cfg.schedule.steps_per_visit:
                    self._end_visit()
                    break
                if cfg.eval.every and _crossed(step_now, n, cfg.eval.every):
                    progress.eval_due = True
                    self._evaluate_if_due()
                if cfg.checkpoint.every and _crossed(step_now, n, cfg.checkpoint.every):
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
        while progress.update_credit >= 1:
            progress.update_credit -= 1
            batch = replay.sample(dqn.batch_size, self.rng, self.device)
            self._window.add_update(*self.update(batch, task))
            progress.updates += 1
        if progress.global_step - progress.last_target_sync >= dqn.target_update_every:
            self.learner.sync_target()
            progress.last_target_sync = progress.global_step

    def _switch_from(self, game: str) -> None:
        """Consolidate the game being left, snapshot it for the probe, keep a milestone, checkpoint.

        With inferred contexts the agent is not told of this switch: only the envs change here."""
        progress = self.progress
        if not self.tasks.inferred:
            self._consolidate_task(game)
        progress.visit += 1
        progress.step_in_visit = 0
        progress.visit_done = False
        self._save_milestone(game)  # before the checkpoint: a kill in between redoes both
        self.save()

    def _change_context(self, game: str) -> None:
        """fmn decided another context: consolidate the one being left, then train the new one."""
        progress = self.progress
        old, new = progress.task, progress.pending_switch
        self._consolidate_task(old)
        if old in self.replays:
            self.replays[old].close_episodes()  # the episodes in progress continue in the new context's buffer
        event = "switch" if new in progress.task_steps else "new"
        progress.task, progress.task_since, progress.pending_switch = new, progress.global_step, ""
        self.learner.set_task(self.tasks.index(new))
        self._log_context(game, new, event)
        self.record.context_changed(progress.global_step, game, old, new, event)

    def _log_context(self, game: str, key: str, event: str) -> None:
        progress = self.progress
        self.record.context(progress.global_step, progress.visit, game, key, event, self.tasks.num_contexts)

    def _consolidate_task(self, key: str) -> None:
        """The anchor of task `key` (a game or a context), which is being left, and its probe snapshot."""
        cons, progress = self.config.consolidation, self.progress
        replay = self.replays.get(key)
        if replay is None or len(replay) == 0:
            return
        started = time.perf_counter()
        self.record.consolidating(progress.global_step, key)
        rng_before = self._rng_state()
        try:
            stats = self._consolidate(key, replay)
        except Interrupted:
            self._load_rng_state(rng_before)  # the resumed run redoes this estimate exactly
            raise
        self.record.consolidated(progress.global_step, key, stats, time.perf_counter() - started)
        if cons.probe_states:
            states = torch.from_numpy(replay.sample_states(cons.probe_states, self.rng))
            self.probe.snapshot(key, self.network, states)

    def _consolidate(self, game: str, replay: FrameReplay) -> dict[str, float]:
        cons = self.config.consolidation
        states, td_losses = None, None
        if self.consolidator.needs_states:
            batch = replay.sample(cons.fisher_batches * cons.fisher_batch_size, self.rng, self.device)
            states = batch.obs
            if self.consolidator.estimator == "empirical":  # the only one that needs TD targets
                targets = []
                for chunk in batch.chunks(256):
                    self._check_stop()
                    targets.append(self.learner.targets(chunk))
                targets = torch.cat(targets)

                def td_losses(outputs, rows):
                    return per_sample_td_loss(outputs, batch.actions[rows], targets[rows],
                                              self.config.dqn.huber_delta)

        return self.consolidator.consolidate(game, self.network, states, self._steps_on(game),
                                             td_losses, self.fisher_generator, poll=self._check_stop)

    # ---------------------------------------------------------------- helpers
    def _replay(self, game: str) -> FrameReplay:
        if game not in self.replays:
            on_device = self.config.replay.storage == "device" and self.device.type != "cpu"
            self.replays[game] = FrameReplay(self.config.replay.capacity_per_game, self.config.env.num_envs,
                                             device=self.device if on_device else None)
        return self.replays[game]

    def _steps_on(self, key: str) -> int:
        """Agent steps trained on task `key` (checkpoints before task keys counted games only)."""
        progress = self.progress
        return progress.task_steps.get(key, 0) if self.tasks.inferred else progress.game_steps.get(key, 0)

    def _epsilon(self, game: str) -> float:
        """Epsilon from the timer epsilon.restart names; with inferred contexts a visit is the time since the
        context began, a game the context's steps (the agent does not know the schedule)."""
        eps, progress = self.config.epsilon, self.progress
        if self.tasks.inferred:
            visit, game_steps = progress.global_step - progress.task_since, self._steps_on(progress.task)
        else:
            visit, game_steps = progress.step_in_visit, progress.game_steps.get(game, 0)
        timer = {"visit": visit, "game": game_steps, "never": progress.global_step}[eps.restart]
        return linear_epsilon(timer, eps.start, eps.end, eps.decay_steps)

    def _log_episodes(self, game: str, episodic_returns: np.ndarray, lengths: np.ndarray) -> None:
        self.record.episodes(self.progress.global_step, game, episodic_returns, lengths)
        self._window.returns.extend(episodic_returns.tolist())

    def _log_scalars(self, epsilon: float, game_index: int) -> None:
        step = self.progress.global_step
        stats = self._window.flush(step)
        if stats.get("td_loss") is not None and not (math.isfinite(stats["td_loss"])
                                                      and math.isfinite(stats["q_values"])):
            raise TrainingDiverged(f"Non-finite loss or Q-values at step {step} "
                                   f"(td_loss={stats['td_loss']}, q={stats['q_values']}).")
        self.record.training(step, stats, epsilon, game_index, self.progress.updates,
                             len(self.consolidator.active_anchors(self.progress.task)))

    def _log_retention(self, game: str) -> None:
        self.record.retention(self.progress.global_step, self.probe.measure(self.network, current_game=game))

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
                                 num_envs=cfg.num_envs, on_episode=on_episode, poll=self._check_stop,
                                 task_of=self.tasks.task_of)
        self.record.evaluation(progress.global_step, progress.visit, trained, results)
        progress.eval_due = False

    @contextlib.contextmanager
    def _stoppable_at_once(self, what: str):
        """ale-py builds and resets its envs in C++ holding the GIL (about 0.16 s an env on 2 cores), so no
        Python handler runs meanwhile: with many envs SIGTERM/SIGINT take their default action there instead
        and end the process at once. Nothing is lost: the run's last checkpoint was written at the start of
        this visit or later, and a resume continues from it exactly as after any kill."""
        if self.config.env.num_envs < SLOW_ENV_BUILD:
            yield
            return
        previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._check_stop()  # a signal that came before the window opened
            self.record.line(f"[step {self.progress.global_step:,}] {what} (about "
                             f"{0.16 * self.config.env.num_envs:.0f} s on 2 cores; a stop signal now ends the run "
                             "at once, and --resume continues from its last checkpoint)")
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self._check_stop()

    def _request_stop(self, signum, frame) -> None:
        self._stop_signal = signal.Signals(signum).name

    def _check_stop(self) -> None:
        if self._stop_signal is not None:
            raise Interrupted

    def _print_summary(self) -> None:
        progress = self.progress
        self.record.summary(progress.global_step, self.visits, len(self.config.schedule.games), progress.updates,
                            progress.seconds, self._session_seconds() if self.resumed else None,
                            self.tasks.inferred)

    def _schedule_record(self) -> dict:
        """schedule.json: which game each visit trains (eval.csv's `visit` column indexes `visits`)."""
        schedule = self.config.schedule
        return {"order": schedule.order, "seed": self.config.seed, "games": schedule.games,
                "cycles": schedule.cycles, "visits": self.visits}

    def _total_steps(self) -> int:
        """Agent steps at the end of the schedule (steps_per_visit may have changed on resume)."""
        progress, per_visit = self.progress, self.config.schedule.steps_per_visit
        in_this_visit = 0 if progress.visit_done else max(per_visit - progress.step_in_visit, 0)
        later_visits = max(len(self.visits) - progress.visit - 1, 0)
        return progress.global_step + in_this_visit + later_visits * per_visit

    def _session_seconds(self) -> float:
        return time.monotonic() - self._session_start

    # ---------------------------------------------------------------- state
    def _rng_state(self) -> dict:
        return {"python": list(random.getstate()[1]), "numpy": _numpy_state(self.rng),
                "torch": torch.get_rng_state(), "fisher": self.fisher_generator.get_state()}

    def _load_rng_state(self, rng: dict) -> None:
        random.setstate((3, tuple(rng["python"]), None))
        self.rng.bit_generator.state = _numpy_state_from(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.fisher_generator.set_state(rng["fisher"])

    def state_dict(self) -> dict:
        state = {
            "config": self.config.to_dict(),
            "progress": dataclasses.asdict(self.progress),
            "learner": self.learner.state_dict(),
            "consolidator": self.consolidator.state_dict(),
            "probe": self.probe.state_dict(),
            "tasks": self.tasks.state_dict(),
            "rng": self._rng_state(),
        }
        if self.config.checkpoint.replay:
            state["replay"] = {game: replay.state_dict() for game, replay in self.replays.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint (read on the CPU) onto this trainer's device, whatever device wrote it."""
        self.progress = Progress(**state["progress"])
        self.learner.load_state_dict(state["learner"])
        self.consolidator.load_state_dict(state["consolidator"], self.device)
        self.probe.load_state_dict(state["probe"])
        self.tasks.load_state_dict(state.get("tasks", {}))
        if self.progress.task:  # a switch's consolidation may come before any step: the Fisher needs the task
            self.learner.set_task(self.tasks.index(self.progress.task))
        self._load_rng_state(state["rng"])
        self._record = state.get("record")
        for game, replay_state in state.get("replay", {}).items():
            self._replay(game).load_state_dict(replay_state)

    def save(self, unless_saved: bool = False) -> Path | None:
        """Checkpoint the current state; everything logged so far is flushed first (it belongs to it)."""
        if unless_saved and self._saved == self.progress:
            return None
        if self.record is not None:
            self.record.flush()
        self.progress.seconds += self._session_seconds() - self._session_seconds_saved
        self._session_seconds_saved = self._session_seconds()
        state = self.state_dict()
        state["record"] = rundir.record_sizes(self.run_dir)
        path = save_checkpoint(self.run_dir / "checkpoints", self.progress.global_step, state,
                               self.config.checkpoint.keep)
        self._saved = copy.deepcopy(self.progress)
        return path

    def _save_milestone(self, game: str) -> Path:
        """A small record of the switch kept for ever: the network and the anchor just set, no replay."""
        anchors = self.consolidator.anchors
        # With inferred contexts the anchors are keyed by context: keep the newest (dicts keep their order).
        key = game if game in anchors else ONLINE if ONLINE in anchors else next(reversed(anchors), None)
        anchor = anchors.get(key) if key is not None else None
        state = {"config": self.config.to_dict(), "progress": dataclasses.asdict(self.progress),
                 "learner": {"online": self.learner.state_dict()["online"]}, "left_game": game, "anchor_key": key or "",
                 "tasks": self.tasks.state_dict(),
                 "anchor_importance": anchor["importance"] if anchor else {}}
        # A resumed run that redoes this switch writes the same milestone again: replace it.
        return save_checkpoint(self.run_dir / "milestones", self.progress.global_step, state, keep=None,
                               replace=True)


def _crossed(step: int, advanced: int, every: int) -> bool:
    """True when `step` passed a multiple of `every` within the last `advanced` steps."""
    return step // every != (step - advanced) // every


def _numpy_state(rng: np.random.Generator) -> dict:
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]), "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


def _numpy_state_from(saved: dict) -> dict:
    return {"bit_generator": saved["bit_generator"],
            "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
            "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}
