"""What a person watching the terminal sees: a progress bar, or plain lines for log files.

With `logging.progress_bar: true` a tqdm bar shows the game, the visit, steps/s and the
recent training return, and during evaluations which game is being played. With it off
(batch jobs, log files) a status line is printed every `interval` seconds and at every
visit, evaluation and switch, so a log never stays silent for minutes.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Console:
    def __init__(self, total_steps: int, initial_step: int, bar: bool, interval: float = 30.0, stream=None):
        self.total, self.interval = total_steps, interval
        self.stream = stream or sys.stderr
        self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                        file=self.stream) if bar else None
        self.step = initial_step
        self.last_line = time.monotonic()
        self.rate_from = (self.last_line, initial_step)  # the ETA uses the rate since the last status line
        self.where, self.postfix = "", {}

    def line(self, text: str) -> None:
        """A line that stays (above the bar, if there is one)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def visit(self, game: str, visit: int, visits: int) -> None:
        self.where, self.postfix = f"{game} (visit {visit + 1}/{visits})", {}
        if self.bar is not None:
            self.bar.set_description(self.where)
        else:
            self.line(f"[{self._position()}] training {self.where}")

    def advance(self, steps: int, postfix: dict[str, str] | None = None) -> None:
        self.step += steps
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            if postfix is not None:  # tqdm shows its own steps/s
                self.bar.set_postfix({k: v for k, v in postfix.items() if k != "sps"}, refresh=False)
            self.bar.update(steps)
        elif time.monotonic() - self.last_line >= self.interval:
            self.status()

    def status(self) -> None:
        details = " | ".join(f"{key} {value}" for key, value in self.postfix.items())
        eta = self._eta()
        self.line(f"[{self._position()}] {self.where}" + (f" | {details}" if details else "") + eta)

    def evaluating(self, step: int, games: list[str], episodes: int):
        """Show the evaluation that starts; returns the on_episode callback for evaluate_games."""
        started = time.monotonic()
        self.line(f"[{self._position()}] evaluating {len(games)} game(s) x {episodes} episode(s) at step {step:,}")

        def on_episode(game: str, finished: int) -> None:
            text = f"evaluating at step {step:,}: {game} {finished}/{episodes} episodes"
            if self.bar is not None:
                self.bar.set_description(text, refresh=True)
            elif time.monotonic() - self.last_line >= self.interval:
                self.line(f"[{self._position()}] {text} ({_duration(time.monotonic() - started)} so far)")
        return on_episode

    def evaluated(self, scores: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_description(self.where)
        self.line(f"[{self._position()}] scores: " + ", ".join(f"{g} {s:.1f}" for g, s in scores.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None  # later lines are plain prints

    def _position(self) -> str:
        self.last_line = time.monotonic()
        return f"step {self.step:,}/{self.total:,} {100 * self.step / max(self.total, 1):.0f}%"

    def _eta(self) -> str:
        """From the rate since the previous status line: the current speed, not the run's average
        (acting at random before learning starts is many times faster)."""
        now, (since, step) = time.monotonic(), self.rate_from
        self.rate_from = (now, self.step)
        if self.step <= step or now <= since:
            return ""
        return f" | ETA {_duration((self.total - self.step) * (now - since) / (self.step - step))}"
