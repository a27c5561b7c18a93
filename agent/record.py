"""The run's record as training writes it, behind one interface: TensorBoard scalars, eval.csv,
contexts.csv and plasticity.csv rows, the console's lines and the end-of-run summary.

The loop (agent/trainer.py) says what happened and when; this module says how it is written
down. `rundir.py` owns the files themselves (their columns, atomic appends, and the cut-back a
resume makes to the sizes its checkpoint recorded); a checkpoint flushes the writer first, so
everything logged before it belongs to it.
"""

from __future__ import annotations

import collections
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from agent import rundir
from agent.console import Console
from agent.tasks import CONTEXTS_COLUMNS, context_of

PLASTICITY_COLUMNS = ("step", "visit", "task", "event")  # then one column per diagnostic (agent/plasticity.py)


class RunRecord:
    def __init__(self, run_dir: Path, console: Console):
        self.run_dir, self.console = run_dir, console
        self.writer: SummaryWriter | None = None
        self.last_scores: dict[str, float] = {}  # the latest evaluation's mean return per game

    # ---------------------------------------------------------------- opening and closing
    def open(self, hyperparameters: dict, first_file: bool) -> None:
        """Open TensorBoard's writer (a new event file); the first one of a run gets the config as a table."""
        rundir.wait_for_new_event_file_time(self.run_dir)
        self.writer = SummaryWriter(str(self.run_dir / "tb"))
        if first_file:
            self.writer.add_text("hyperparameters", _markdown_table(hyperparameters), 0)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.console.close()
        if self.writer is not None:
            self.writer.close()

    # ---------------------------------------------------------------- the console
    def line(self, text: str) -> None:
        self.console.line(text)

    def visit(self, game: str, visit: int, visits: int) -> None:
        self.console.visit(game, visit, visits)

    def advance(self, steps: int, postfix: dict[str, str] | None) -> None:
        self.console.advance(steps, postfix)

    # ---------------------------------------------------------------- what happened
    def training(self, step: int, stats: dict[str, float], epsilon: float, game_index: int, updates: int,
                 anchors: int) -> None:
        """The periodic scalars: losses (once updates run), speed, exploration, the game, the anchors."""
        writer = self.writer
        if stats.get("td_loss") is not None:
            writer.add_scalar("losses/td_loss", stats["td_loss"], step)
            writer.add_scalar("losses/q_values", stats["q_values"], step)
            writer.add_scalar("losses/ewc_penalty", stats["penalty"], step)
            writer.add_scalar("losses/grad_norm", stats["grad_norm"], step)  # before clipping
        writer.add_scalar("charts/sps", stats["sps"], step)
        writer.add_scalar("charts/epsilon", epsilon, step)
        writer.add_scalar("charts/game_index", game_index, step)
        writer.add_scalar("charts/updates", updates, step)
        writer.add_scalar("ewc/num_anchors", anchors, step)

    def episodes(self, step: int, game: str, returns: np.ndarray, lengths: np.ndarray) -> None:
        """Episodes that ended at this step: one point per step (their mean; usually there is one), since
        TensorBoard keeps one value per tag and step."""
        self.writer.add_scalar(f"charts/{game}/episodic_return", float(returns.mean()), step)
        self.writer.add_scalar(f"charts/{game}/episodic_length", float(lengths.mean()), step)

    def retention(self, step: int, results: dict[str, dict[str, float]]) -> None:
        for other, result in results.items():
            for name, value in result.items():
                self.writer.add_scalar(f"retention/{other}/{name}", value, step)

    def consolidating(self, step: int, key: str) -> None:
        self.console.line(f"[step {step:,}] consolidating {key}")

    def consolidated(self, step: int, key: str, stats: dict[str, float], seconds: float) -> None:
        for name, value in stats.items():
            self.writer.add_scalar(f"ewc/{key}/fisher_{name}", value, step)
        self.writer.add_scalar("ewc/consolidation_seconds", seconds, step)

    def plasticity(self, step: int, visit: int, task: str, event: str, values: dict[str, float]) -> None:
        """A measurement of the plasticity diagnostics: TensorBoard (plasticity/...) and a row of plasticity.csv."""
        for name, value in values.items():
            if math.isfinite(value):  # churn has no value at the first measurement: no point, an empty cell
                self.writer.add_scalar(f"plasticity/{name}", value, step)
        rundir.append_rows(self.run_dir / "plasticity.csv", (*PLASTICITY_COLUMNS, *values),
                           [[step, visit, task, event, *(v if math.isfinite(v) else "" for v in values.values())]])

    def plasticity_method(self, step: int, method: str, values: dict[str, float]) -> None:
        """A method that restores plasticity acted on the weights (ReDo's recycling, a shrink, a reset)."""
        for name, value in values.items():
            self.writer.add_scalar(f"plasticity/{method}/{name}", value, step)
        if method != "redo":  # ReDo acts every redo_every updates: TensorBoard only
            self.console.line(f"[step {step:,}] plasticity: {method} " + ", ".join(f"{k}={v:g}"
                                                                                for k, v in values.items()))

    def context(self, step: int, visit: int, game: str, key: str, event: str, contexts: int) -> None:
        """A row of contexts.csv: a true switch (event `visit`) or an inferred change (`switch`, `new`)."""
        rundir.append_rows(self.run_dir / "contexts.csv", CONTEXTS_COLUMNS, [[step, visit, game, key, event]])
        self.writer.add_scalar("task/context", context_of(key), step)
        self.writer.add_scalar("task/contexts", contexts, step)

    def context_changed(self, step: int, game: str, old: str, new: str, event: str) -> None:
        self.console.line(f"[step {step:,}] {game}: {old} -> {new}" + (" (new)" if event == "new" else ""))

    def evaluating(self, step: int, games: list[str], episodes: int):
        """The console's per-episode callback for an evaluation about to start."""
        return self.console.evaluating(step, games, episodes)

    def evaluation(self, step: int, visit: int, trained: str, results: dict) -> None:
        """An evaluation of every game: TensorBoard, eval.csv (one write) and the console."""
        rows = []
        for game, row in results["games"].items():
            self.writer.add_scalar(f"eval/{game}/return", row["mean"], step)
            if "task" in row:
                self.writer.add_scalar(f"eval/{game}/task", row["task"], step)
            rows.append([step, visit, trained, game, row["mean"], row["std"], row["episodes"],
                         "" if row["human_normalized"] is None else row["human_normalized"]])
        if results["mean_human_normalized"] is not None:
            self.writer.add_scalar("eval/mean_human_normalized", results["mean_human_normalized"], step)
        rundir.append_eval_rows(self.run_dir, rows)
        self.last_scores = {game: row["mean"] for game, row in results["games"].items()}
        self.console.evaluated(self.last_scores)

    def summary(self, steps: int, visits: list[str], games_per_cycle: int, updates: int, seconds: float,
                session_seconds: float | None, inferred: bool) -> None:
        """The end of the run: what was trained, the last scores, and where everything is."""
        self.console.close()  # the summary goes below the finished bar
        run_dir = self.run_dir
        lines = [f"Finished {steps:,} agent steps ({len(visits)} visits, {updates:,} updates) in {_hours(seconds)} of "
                 "training" + (f", {_hours(session_seconds)} in this session." if session_seconds is not None else ".")]
        lines.append("Order: " + _order_text(visits, games_per_cycle))
        if self.last_scores:
            lines.append("Final evaluation (mean return): " + ", ".join(f"{game} {score:.1f}"
                                                                      for game, score in self.last_scores.items()))
        lines += [f"Run directory: {run_dir}",
                  f"  eval.csv     every evaluation; report: python scripts/report.py {run_dir}",
                  "  schedule.json the game of every visit",
                  "  plasticity.csv dormant units, feature rank, weight drift, churn (when plasticity.every is set)"
                  + ("\n  contexts.csv  every true switch and inferred change of context" if inferred else ""),
                  f"  tb/          TensorBoard: tensorboard --logdir {run_dir}",
                  "  checkpoints/ the newest full states (resume); milestones/ the network at every switch",
                  f"  evaluate:    python scripts/evaluate.py --checkpoint {run_dir} --episodes 10"]
        self.console.line("\n".join(lines))


class Window:
    """Running sums between two logs; device tensors are read once per log, not per update."""

    def __init__(self, step: int):
        self.returns: collections.deque[float] = collections.deque(maxlen=20)
        self.sps = 0.0
        self._start(time.perf_counter(), step)

    def _start(self, now: float, step: int) -> None:
        self.sums: list[torch.Tensor] | None = None
        self.count = 0
        self.time, self.step = now, step

    def add_update(self, td_loss: torch.Tensor, q_mean: torch.Tensor, penalty: torch.Tensor,
                   grad_norm: torch.Tensor) -> None:
        values = [td_loss, q_mean, penalty, grad_norm]  # a CUDA graph's outputs: overwritten by the next update
        self.sums = [v.clone() for v in values] if self.sums is None else [a + b for a, b in zip(self.sums, values)]
        self.count += 1

    def flush(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        self.sps = (step - self.step) / max(now - self.time, 1e-9)
        stats = {"sps": self.sps}
        if self.sums is not None:
            td_loss, q_values, penalty, grad_norm = (float(s) / self.count for s in self.sums)
            stats.update(td_loss=td_loss, q_values=q_values, penalty=penalty, grad_norm=grad_norm)
        self._start(now, step)
        return stats

    def postfix(self) -> dict[str, str]:
        """The progress bar's figures: speed, and the mean return of the last 20 episodes that ended (none may
        have yet: Atari episodes last thousands of steps)."""
        recent = f"{np.mean(self.returns):.1f}" if self.returns else "none yet"
        return {"sps": f"{self.sps:.0f}", "return": recent}


def _order_text(visits: list[str], per_cycle: int) -> str:
    """The visits cycle by cycle: 'Pong, Breakout | Breakout, Pong'."""
    return " | ".join(", ".join(visits[start:start + per_cycle]) for start in range(0, len(visits), per_cycle))


def _hours(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


def _markdown_table(config: dict, prefix: str = "") -> str:
    rows = []
    for key, value in config.items():
        if isinstance(value, dict):
            rows.append(_markdown_table(value, f"{prefix}{key}."))
        else:
            rows.append(f"|{prefix}{key}|{value}|")
    table = "\n".join(rows)
    return table if prefix else "|param|value|\n|-|-|\n" + table
