"""A run's plasticity.csv read back for reports: the diagnostics over training, their value at the end of
each visit (what metrics.json keeps), and beside them the score of the game each visit trained (can the
network still learn?). Written by training (agent/plasticity_monitor.py)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.metrics import EvalLog, MetricsError

ID_COLUMNS = ("step", "visit", "task", "event")


@dataclass
class PlasticityLog:
    steps: np.ndarray
    visits: np.ndarray
    tasks: list[str]
    values: dict[str, np.ndarray]  # one array per diagnostic, nan where it was not measured (first churn)

    @classmethod
    def read(cls, run_dir: Path, until_step: int | None = None) -> PlasticityLog | None:
        """The run's plasticity.csv up to `until_step`; None when the run has none (diagnostics off, or older)."""
        path = Path(run_dir) / "plasticity.csv"
        if not path.is_file():
            return None
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return None
        if not set(ID_COLUMNS) <= set(rows[0]):
            raise MetricsError(f"{path} lacks the columns {list(ID_COLUMNS)}: it is not a plasticity.csv written by "
                               "training.")
        rows = [r for r in rows if until_step is None or int(r["step"]) <= until_step]
        names = [name for name in rows[0] if name not in ID_COLUMNS] if rows else []
        try:
            values = {name: np.array([float(r[name]) if r[name] not in ("", None) else math.nan for r in rows])
                      for name in names}
            log = cls(np.array([int(r["step"]) for r in rows], dtype=np.int64),
                      np.array([int(r["visit"]) for r in rows], dtype=np.int64), [r["task"] for r in rows], values)
        except (TypeError, ValueError) as exc:
            raise MetricsError(f"{path} has a malformed row ({exc}).") from None
        distances = [v for name, v in values.items() if name.startswith("weight_distance/")]
        if distances:  # the whole network's distance from its initial weights
            log.values["weight_distance/all"] = np.sqrt(sum(d**2 for d in distances))
        return log

    def end_of_visits(self) -> list[dict]:
        """Per visit, the last measurement taken in it (at its switch, when the diagnostics ran there)."""
        ends = []
        for visit in sorted(set(self.visits.tolist())):
            last = int(np.flatnonzero(self.visits == visit)[-1])
            ends.append({"visit": visit, "task": self.tasks[last], "step": int(self.steps[last]),
                         **{name: _finite(v[last]) for name, v in self.values.items()}})
        return ends


# The diagnostics a report's visit table shows, with their column titles.
VISIT_COLUMNS = {"dormant_tau0.1/all": "dormant (score <= 0.1)", "dormant_tau0/all": "never active (score 0)",
                 "effective_rank": "effective rank", "weight_distance/all": "distance from init"}


def visit_table(log: EvalLog, plasticity: PlasticityLog) -> list[dict]:
    """Per finished visit: the game it trained, that game's return at the visit's last evaluation (raw, and
    human-normalised), whether it was the game's first visit, and the diagnostics at the visit's end (None
    where the visit had no measurement)."""
    ends = {end["visit"]: end for end in plasticity.end_of_visits()}
    seen: set[str] = set()
    rows = []
    for visit in log.visit_table():
        first = visit.game not in seen
        seen.add(visit.game)
        if not visit.finished:
            continue
        steps, returns = log.series(visit.game)
        _, human = log.series(visit.game, column="human_normalized")
        i = int(np.searchsorted(steps, visit.end_step, side="right")) - 1
        inside = i >= 0 and steps[i] > visit.start_step
        end = ends.get(visit.index, {})
        rows.append({"visit": visit.index, "game": visit.game, "first_visit": first, "step": visit.end_step,
                     "return": _finite(returns[i]) if inside else None,
                     "human_normalized": _finite(human[i]) if inside else None,
                     **{name: end.get(name) for name in VISIT_COLUMNS}})
    return rows


def visit_markdown(tables: dict[str, tuple[str, list[dict]]]) -> str:
    """One markdown table of every run's visits: {run: (method, visit_table rows)}."""
    lines = ["| run | method | visit: game trained | its return at the visit's end | human-normalised | "
             + " | ".join(VISIT_COLUMNS.values()) + " |", "|---|---|---|---:|---:|" + "---:|" * len(VISIT_COLUMNS)]
    for run, (method, rows) in tables.items():
        for r in rows:
            cells = [_cell(r["return"], 1), _cell(r["human_normalized"], 3),
                     *(_cell(r[name], 2 if name == "effective_rank" or "distance" in name else 3)
                       for name in VISIT_COLUMNS)]
            label = f"{r['visit']}: {r['game']}" + (" (new)" if r["first_visit"] else "")
            lines.append(f"| {run} | {method} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
