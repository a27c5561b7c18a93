"""The training loop: one DQN agent through a schedule of Atari games.

act -> step -> store -> (every `train_every` steps) sample -> loss -> update,
and at each game switch: consolidate -> snapshot for the retention probe ->
checkpoint -> new envs. The one place where the environments meet the learner
(evaluation plays episodes on its own, in agent/evaluation.py).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agent.checkpoint import CheckpointError, load_latest, save_checkpoint
from agent.config import TrainConfig, resolve_device, validate_config
from agent.consolidation import Consolidator
from agent.dqn import DQNLearner, epsilon_greedy, linear_epsilon, per_sample_td_loss
from agent.evaluation import evaluate_games
from agent.networks import QNetwork
from agent.probe import RetentionProbe
from agent.replay import FrameReplay
from envs import NUM_ACTIONS, make_vector_env

EXIT_DONE, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_DIVERGED, EXIT_CHECKPOINT_FAILED = 0, 2, 3, 4, 5
# Keys that may differ between a checkpoint's config and the config it is resumed with.
RESUMABLE_CHANGES = ("schedule.cycles", "schedule.steps_per_visit", "device", "torch_threads",
                     "logging.", "checkpoint.every", "checkpoint.keep", "consolidation.probe_every", "eval.")
EVAL_COLUMNS = ("step", "visit", "trained_game", "game", "mean_return", "std_return", "episodes", "human_normalized")


class TrainingDiverged(RuntimeError):
    """Non-finite loss or Q-values."""


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


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, checkpoint: dict | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.fisher_generator = torch.Generator().manual_seed(config.seed)

        self.network = QNetwork(NUM_ACTIONS, config.network.architecture).to(self.device)
        dqn = config.dqn
        self.learner = DQNLearner(self.network, dqn.learning_rate, dqn.adam_eps, dqn.gamma, dqn.double_dqn,
                                  dqn.huber_delta, dqn.max_grad_norm, dqn.clip_rewards, dqn.precision)
        cons = config.consolidation
        self.consolidator = Consolidator(cons.method, cons.lambda_, cons.fisher_estimator, cons.normalize,
                                         cons.online_gamma, cons.min_steps_to_protect, cons.fisher_batch_size)
        self.probe = RetentionProbe()
        self.replays: dict[str, FrameReplay] = {}
        self.progress = Progress()
        self.visits = [game for _ in range(config.schedule.cycles) for game in config.schedule.games]
        self.settings = config.env.atari_settings()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is not None:
            self.load_state_dict(checkpoint)
            _drop_rows_after(self.run_dir / "eval.csv", self.progress.global_step)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        # purge_step drops events a killed run logged after its last checkpoint: no overlapping curves.
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.progress.global_step or None)
        if self.progress.global_step == 0:
            self.writer.add_text("hyperparameters", _markdown_table(config.to_dict()), 0)
        self._stop_signal: int | None = None
        self._window = _Window(self.progress.global_step)

    # ---------------------------------------------------------------- the loop
    def train(self) -> int:
        """Run the schedule to its end; returns an exit code (EXIT_*)."""
        if self.progress.visit >= len(self.visits):
            print(f"The run in {self.run_dir} already finished its schedule ({self.progress.global_step} steps); "
                  "raise schedule.cycles to continue it.", file=sys.stderr)
            return EXIT_DONE
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        bar = tqdm(total=self.config.schedule.total_steps, initial=self.progress.global_step, unit="step",
                   dynamic_ncols=True, disable=not self.config.logging.progress_bar)
        try:
            if self.progress.global_step == 0:
                self._evaluate()  # the untrained network: the "before" scores of forward transfer
            while self.progress.visit < len(self.visits):
                game = self.visits[self.progress.visit]
                self._run_visit(game, bar)
                if self._stop_signal is not None:
                    self.save()
                    bar.write(f"Stopped by signal {self._stop_signal} at step {self.progress.global_step}; "
                              f"checkpoint written. Continue with: scripts/train.py --resume {self.run_dir}",
                              file=sys.stderr)
                    return EXIT_INTERRUPTED
                self._switch_from(game)
            return EXIT_DONE
        except TrainingDiverged as exc:
            bar.write(f"{exc}\nThe last good checkpoint in {self.run_dir / 'checkpoints'} is kept. "
                      "Try a lower dqn.learning_rate, a lower consolidation.lambda, or dqn.max_grad_norm.",
                      file=sys.stderr)
            return EXIT_DIVERGED
        except CheckpointError as exc:
            bar.write(f"{exc}\nStopped at step {self.progress.global_step}. Resume with: scripts/train.py --resume "
                      f"{self.run_dir}", file=sys.stderr)
            return EXIT_CHECKPOINT_FAILED
        finally:
            bar.close()
            self.writer.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run_visit(self, game: str, bar: tqdm) -> None:
        cfg, progress = self.config, self.progress
        env = make_vector_env(game, cfg.env.num_envs, self.settings, cfg.env.backend, cfg.env.num_threads)
        replay = self._replay(game)
        replay.close_episodes()  # new envs: no episode continues from the buffer's last one
        # A resumed visit gets fresh episodes from its own seed (ale-py cannot restore emulator state).
        seed_sequence = np.random.SeedSequence([cfg.seed, progress.visit, progress.step_in_visit])
        seed = int(seed_sequence.generate_state(1)[0] % 2**31)
        obs = env.reset(seed=seed)
        lives = np.zeros(env.num_envs, dtype=np.int64)
        returns = np.zeros(env.num_envs)
        lengths = np.zeros(env.num_envs, dtype=np.int64)
        game_index = cfg.schedule.games.index(game)
        bar.set_description(f"{game} (visit {progress.visit + 1}/{len(self.visits)})")
        try:
            while progress.step_in_visit < cfg.schedule.steps_per_visit and self._stop_signal is None:
                epsilon = self._epsilon(game)
                actions = epsilon_greedy(self.network, obs, epsilon, self.rng, self.device, NUM_ACTIONS)
                step = env.step(actions)
                real = ~step.was_reset  # the autoreset step is no transition: never stored
                episode_over = step.terminated | step.truncated
                dones = step.terminated | (cfg.env.life_loss_terminal & (step.lives < lives) & real)
                replay.add(obs, actions, step.reward, dones, episode_over, step.obs, mask=real)
                returns += np.where(real, step.reward, 0.0)
                lengths += real
                for env_id in np.flatnonzero(episode_over):
                    self._log_episode(game, returns[env_id], lengths[env_id])
                    returns[env_id], lengths[env_id] = 0.0, 0
                obs, lives = step.obs, step.lives

                progress.step_in_visit += env.num_envs
                progress.global_step += env.num_envs
                progress.game_steps[game] = progress.game_steps.get(game, 0) + env.num_envs
                self._learn(game, replay, env.num_envs)
                bar.update(env.num_envs)

                step_now = progress.global_step
                if _crossed(step_now, env.num_envs, cfg.logging.log_every):
                    self._log_scalars(epsilon, game_index)
                    bar.set_postfix(self._window.postfix(), refresh=False)
                if _crossed(step_now, env.num_envs, cfg.consolidation.probe_every):
                    self._log_retention(game)
                if cfg.eval.every and _crossed(step_now, env.num_envs, cfg.eval.every) \
                        and progress.step_in_visit < cfg.schedule.steps_per_visit:
                    self._evaluate()
                if cfg.checkpoint.every and _crossed(step_now, env.num_envs, cfg.checkpoint.every) \
                        and progress.step_in_visit < cfg.schedule.steps_per_visit:
                    self.save()
        finally:
            env.close()

    def _learn(self, game: str, replay: FrameReplay, new_steps: int) -> None:
        dqn, progress = self.config.dqn, self.progress
        if len(replay) < dqn.learning_starts:
            return
        progress.update_credit += new_steps / dqn.train_every
        while progress.update_credit >= 1:
            progress.update_credit -= 1
            batch = replay.sample(dqn.batch_size, self.rng, self.device)
            td_loss, q_mean = self.learner.td_loss(batch)
            penalty = self.consolidator.penalty(self.network, current_game=game)
            loss = td_loss + penalty
            self.learner.apply(loss)
            progress.updates += 1
            self._window.add_update(td_loss.detach(), q_mean, penalty.detach())
        if progress.global_step - progress.last_target_sync >= dqn.target_update_every:
            self.learner.sync_target()
            progress.last_target_sync = progress.global_step

    def _switch_from(self, game: str) -> None:
        """Consolidate the game being left, snapshot it for the probe, checkpoint."""
        cons, progress = self.config.consolidation, self.progress
        self._evaluate()  # the score of every game at the end of this visit
        replay = self.replays[game]
        if len(replay) > 0:
            started = time.perf_counter()
            states, td_losses = None, None
            if self.consolidator.needs_states:
                batch = replay.sample(cons.fisher_batches * cons.fisher_batch_size, self.rng, self.device)
                targets = torch.cat([self.learner.targets(chunk) for chunk in batch.chunks(256)])
                states = batch.obs

                def td_losses(outputs, rows):
                    return per_sample_td_loss(outputs, batch.actions[rows], targets[rows], self.config.dqn.huber_delta)

            stats = self.consolidator.consolidate(game, self.network, states, progress.game_steps[game],
                                                  td_losses, self.fisher_generator)
            for name, value in stats.items():
                self.writer.add_scalar(f"ewc/{game}/fisher_{name}", value, progress.global_step)
            self.writer.add_scalar("ewc/consolidation_seconds", time.perf_counter() - started, progress.global_step)
            if cons.probe_states:
                states = torch.from_numpy(replay.sample_states(cons.probe_states, self.rng))
                self.probe.snapshot(game, self.network, states)
        progress.visit += 1
        progress.step_in_visit = 0
        self.save()

    # ---------------------------------------------------------------- helpers
    def _replay(self, game: str) -> FrameReplay:
        if game not in self.replays:
            self.replays[game] = FrameReplay(self.config.replay.capacity_per_game, self.config.env.num_envs)
        return self.replays[game]

    def _epsilon(self, game: str) -> float:
        eps, progress = self.config.epsilon, self.progress
        timer = {"visit": progress.step_in_visit, "game": progress.game_steps.get(game, 0),
                 "never": progress.global_step}[eps.restart]
        return linear_epsilon(timer, eps.start, eps.end, eps.decay_steps)

    def _log_episode(self, game: str, episodic_return: float, length: int) -> None:
        step = self.progress.global_step
        self.writer.add_scalar(f"charts/{game}/episodic_return", episodic_return, step)
        self.writer.add_scalar(f"charts/{game}/episodic_length", length, step)
        self._window.returns.append(episodic_return)

    def _log_scalars(self, epsilon: float, game_index: int) -> None:
        step, writer = self.progress.global_step, self.writer
        stats = self._window.flush(step)
        if stats.get("td_loss") is not None:
            if not (math.isfinite(stats["td_loss"]) and math.isfinite(stats["q_values"])):
                raise TrainingDiverged(f"Non-finite loss or Q-values at step {step} "
                                       f"(td_loss={stats['td_loss']}, q={stats['q_values']}).")
            writer.add_scalar("losses/td_loss", stats["td_loss"], step)
            writer.add_scalar("losses/q_values", stats["q_values"], step)
            writer.add_scalar("losses/ewc_penalty", stats["penalty"], step)
        writer.add_scalar("charts/sps", stats["sps"], step)
        writer.add_scalar("charts/epsilon", epsilon, step)
        writer.add_scalar("charts/game_index", game_index, step)
        writer.add_scalar("charts/updates", self.progress.updates, step)
        writer.add_scalar("ewc/num_anchors", len(self.consolidator.active_anchors(self.visits[self.progress.visit])),
                          step)

    def _log_retention(self, game: str) -> None:
        for other, result in self.probe.measure(self.network, current_game=game).items():
            for name, value in result.items():
                self.writer.add_scalar(f"retention/{other}/{name}", value, self.progress.global_step)

    def _evaluate(self) -> None:
        """Play every game of the schedule with its own envs and RNG; log and append to eval.csv."""
        cfg, progress = self.config.eval, self.progress
        if cfg.episodes == 0:
            return
        games = self.config.schedule.games
        trained = self.visits[progress.visit] if progress.visit < len(self.visits) else ""
        results = evaluate_games(self.network, games, cfg.episodes, cfg.epsilon,
                                 seed=self.config.seed + 7919 * (progress.global_step + 1),
                                 settings=self.config.env.atari_settings(cfg.max_episode_frames),
                                 num_envs=cfg.num_envs)
        path = self.run_dir / "eval.csv"
        new_file = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(EVAL_COLUMNS)
            for game, row in results["games"].items():
                self.writer.add_scalar(f"eval/{game}/return", row["mean"], progress.global_step)
                writer.writerow([progress.global_step, progress.visit, trained, game, row["mean"], row["std"],
                                 row["episodes"], "" if row["human_normalized"] is None else row["human_normalized"]])
        if results["mean_human_normalized"] is not None:
            self.writer.add_scalar("eval/mean_human_normalized", results["mean_human_normalized"], progress.global_step)

    def _request_stop(self, signum, frame) -> None:
        self._stop_signal = signum

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = {
            "config": self.config.to_dict(),
            "progress": dataclasses.asdict(self.progress),
            "learner": self.learner.state_dict(),
            "consolidator": self.consolidator.state_dict(),
            "probe": self.probe.state_dict(),
            "rng": {"python": list(random.getstate()[1]), "numpy": _numpy_state(self.rng),
                    "torch": torch.get_rng_state(), "fisher": self.fisher_generator.get_state()},
        }
        if self.config.checkpoint.replay:
            state["replay"] = {game: replay.state_dict() for game, replay in self.replays.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.progress = Progress(**state["progress"])
        self.learner.load_state_dict(state["learner"])
        self.consolidator.load_state_dict(state["consolidator"])
        self.probe.load_state_dict(state["probe"])
        rng = state["rng"]
        random.setstate((3, tuple(rng["python"]), None))
        self.rng.bit_generator.state = _numpy_state_from(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.fisher_generator.set_state(rng["fisher"])
        for game, replay_state in state.get("replay", {}).items():
            self._replay(game).load_state_dict(replay_state)

    def save(self) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints", self.progress.global_step, self.state_dict(),
                               self.config.checkpoint.keep)


class _Window:
    """Running sums between two logs; device tensors are read once per log, not per update."""

    def __init__(self, step: int):
        self.returns: collections.deque[float] = collections.deque(maxlen=20)
        self.sps = 0.0
        self._start(time.perf_counter(), step)

    def _start(self, now: float, step: int) -> None:
        self.sums: list[torch.Tensor] | None = None
        self.count = 0
        self.time, self.step = now, step

    def add_update(self, td_loss: torch.Tensor, q_mean: torch.Tensor, penalty: torch.Tensor) -> None:
        values = [td_loss, q_mean, penalty]
        self.sums = values if self.sums is None else [a + b for a, b in zip(self.sums, values)]
        self.count += 1

    def flush(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        self.sps = (step - self.step) / max(now - self.time, 1e-9)
        stats = {"sps": self.sps}
        if self.sums is not None:
            td_loss, q_values, penalty = (float(s) / self.count for s in self.sums)
            stats.update(td_loss=td_loss, q_values=q_values, penalty=penalty)
        self._start(now, step)
        return stats

    def postfix(self) -> dict[str, str]:
        recent = f"{np.mean(self.returns):.1f}" if self.returns else "-"
        return {"sps": f"{self.sps:.0f}", "return": recent}


def _drop_rows_after(path: Path, step: int) -> None:
    """Forget evaluations a killed run logged after the checkpoint it resumes from (they will be redone)."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= step]
    if len(kept) != len(rows):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
        tmp.replace(path)


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


def _markdown_table(config: dict, prefix: str = "") -> str:
    rows = []
    for key, value in config.items():
        if isinstance(value, dict):
            rows.append(_markdown_table(value, f"{prefix}{key}."))
        else:
            rows.append(f"|{prefix}{key}|{value}|")
    table = "\n".join(rows)
    return table if prefix else "|param|value|\n|-|-|\n" + table


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def resume(run_dir: Path, config: TrainConfig | None = None) -> Trainer:
    """A Trainer continuing the run in `run_dir`; `config`, when given, must agree on the unsafe keys."""
    path, state = load_latest(Path(run_dir) / "checkpoints")
    saved = validate_config(state["config"], f"config stored in {path}", stored=True)
    if config is None:
        config = saved
    unsafe = [key for key in differing_keys(saved.to_dict(), config.to_dict())
              if not key.startswith(RESUMABLE_CHANGES)]
    if unsafe:
        details = "\n".join(f"  {key}: checkpoint {_lookup(saved.to_dict(), key)!r}, now "
                            f"{_lookup(config.to_dict(), key)!r}" for key in unsafe)
        raise ValueError(f"Cannot resume {run_dir}: the config differs from the checkpoint's in keys that "
                         f"change the run:\n{details}\nOnly {', '.join(RESUMABLE_CHANGES)} may change on resume.")
    return Trainer(config, run_dir, checkpoint=state)


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
