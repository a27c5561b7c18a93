"""A run's plasticity.csv read back for reports: the diagnostics over training, and their value at the
end of each visit (what metrics.json keeps). Written by training (agent/plasticity_monitor.py)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.metrics import MetricsError

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


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
