"""Which task is this? Forget-Me-Not context inference from the frames alone.

Kirkpatrick et al. (2017, supplementary) let EWC run without task labels by inferring the task with the
Forget-Me-Not process (Milan et al. 2016), simplified to a "flat FMN": the task context is the hidden state
of an HMM; each context has a Dirichlet-multinomial model of the pixels of downsampled frames; frames come
in windows of `window` observations; on each window the most probable context keeps the window in its
counts and the others stay as they were (they "revert"). A held-out model competes too: an uninitialised
Dirichlet-multinomial (no counts yet) scored with the same Polya predictive as every context, the window's
earlier frames included. When it wins, the window starts a new context.

The paper's parts, as above. This project's choices, each measured on recorded random play of CORA's six
games and of a second, disjoint set of six (scripts/fmn_frames.py; the figures are in docs/full-agent.md):

- Frames: 84x84 uint8 -> `size` x `size` by 2x2 mean pooling (frames already `size` x `size` are taken as
  they are), then `levels` gray levels, value * levels // 256 (in integers: sum of the 4 pixels * levels // 1024).
- Pixels are independent given the context. Context k scores a window with the Polya predictive: each frame,
  one after another, gets (n_k[p, x] + alpha) / (N_k[p] + levels * alpha) per pixel p, with the window's
  earlier frames added to the counts; the held-out model is the same with n = 0.
- Tempering: a window's log-likelihoods are multiplied by `evidence_scale` before the HMM combines them with
  its prior. With thousands of pixel-frames per window, raw differences of hundreds to tens of thousands of
  nats decide every window by maximum likelihood alone; scaled, the switch prior and the margin matter.
- HMM filtering, one step per window. From the filtered posterior post over the K existing contexts, the
  task stays with probability 1 - s, or switches with probability s spread evenly over the K other
  hypotheses (K - 1 other contexts and a new one): prior_k = (1 - s) post_k + s (1 - post_k) / K and
  prior_new = s / K, with s = switch_prior / (1 + windows since the decided context last changed). The
  posterior is renormalised (log-sum-exp) after every window, so it stays finite however long the run.
- The new-context hypothesis wins only if it beats the best existing context by `new_context_margin` (in the
  same tempered units). With `max_contexts` contexts already, a window the new hypothesis would win goes to
  the best existing context.
- Persistence: a change of context is decided only when `persist` consecutive windows prefer the same other
  context (or, for a new one, the context those windows start). Meanwhile the decided context stays; the
  pending windows are kept aside (a new context being tried holds them already, so later windows are scored
  against it). If the change does not persist, the pending windows go to the decided context and a context
  they started is removed: a flash of odd frames makes no context and no switch.
- Counts are float64 and decay: when a context's per-pixel total passes `max_count`, every count of it is
  scaled by max_count / total. A context thus weighs about its last max_count frames, older ones
  exponentially less, and a rare gray level fades instead of being deleted by integer halving.
- No randomness: ties go to the lowest context id. `state_dict` holds numpy arrays and Python scalars only
  and resumes bit for bit, the partial window and the pending change included.

What it cannot do, by construction: games whose pooled frames are mostly the same gray levels (a black
background with small sprites) can share a context; the measured overlap is in docs/full-agent.md.

numpy only; knows nothing about the agent or the environments.
"""

from __future__ import annotations

import math

import numpy as np


class ForgetMeNot:
    MODEL = "flat-fmn-v2"  # v1 (before): a uniform held-out model and integer counts halved past max_count

    def __init__(self, levels: int = 8, window: int = 4, size: int = 42, alpha: float = 0.5,
                 switch_prior: float = 0.1, max_contexts: int = 16, new_context_margin: float = 0.0,
                 max_count: int = 1000, evidence_scale: float = 1.0, persist: int = 1):
        if not 2 <= levels <= 256:
            raise ValueError(f"levels must be in [2, 256], got {levels}.")
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}.")
        if size < 1:
            raise ValueError(f"size must be at least 1 pixel, got {size}.")
        if not alpha > 0:
            raise ValueError(f"alpha (the Dirichlet pseudo-count) must be positive, got {alpha}.")
        if not 0 < switch_prior < 1:
            raise ValueError(f"switch_prior must be in (0, 1), got {switch_prior}.")
        if max_contexts < 1:
            raise ValueError(f"max_contexts must be at least 1, got {max_contexts}.")
        if not new_context_margin >= 0:
            raise ValueError(f"new_context_margin must be >= 0, got {new_context_margin}.")
        if max_count < window:
            raise ValueError(f"max_count must be at least the window ({window}), got {max_count}.")
        if not evidence_scale > 0:
            raise ValueError(f"evidence_scale must be positive, got {evidence_scale}.")
        if persist < 1:
            raise ValueError(f"persist must be at least 1 window, got {persist}.")
        self.levels, self.window, self.size, self.alpha = levels, window, size, float(alpha)
        self.switch_prior, self.max_contexts = float(switch_prior), max_contexts
        self.new_context_margin, self.max_count = float(new_context_margin), max_count
        self.evidence_scale, self.persist = float(evidence_scale), persist
        pixels = size * size
        self._pixel_offsets = np.arange(pixels, dtype=np.int64) * levels  # flat index of (pixel, level 0)
        # The gray level of a 2x2 block from the sum of its 4 pixels: mean * levels // 256.
        self._pooled_levels = (np.arange(4 * 255 + 1) * levels // 1024).astype(np.uint8)
        self.counts = np.zeros((0, pixels, levels), dtype=np.float64)  # n[k, pixel, level]
        self._totals = np.zeros(0)  # N[k]: frames counted per pixel (the same for every pixel), after decay
        self.log_posterior = np.zeros(0, dtype=np.float64)  # filtered, over the existing contexts
        self._context: int | None = None
        self.windows_since_switch = 0
        self.windows_decided = 0  # decisions made
        self.frames_observed = 0  # frames observed
        self._buffer = np.zeros((window, pixels), dtype=np.uint8)  # the partial window, as gray levels
        self._buffered = 0
        self._pending: list[np.ndarray] = []  # windows preferring another context, not yet decided
        self._pending_target: int | None = None  # the context they prefer (possibly one they started)
        self._pending_new = False  # whether that context was started by the pending windows

    @property
    def context(self) -> int | None:
        """The context of the last decided window (None before the first decision)."""
        return self._context

    @property
    def num_contexts(self) -> int:
        """Contexts decided so far (a context being tried by pending windows is not counted)."""
        return len(self.counts) - (1 if self._pending_new else 0)

    def observe(self, frame: np.ndarray) -> int | None:
        """Feed one uint8 frame (84x84, or already size x size). Every `window` frames, decide and return
        the context in force (0, 1, ...); between decisions return None."""
        self._buffer[self._buffered] = self._quantize(np.asarray(frame)[None])[0]
        self._buffered += 1
        self.frames_observed += 1
        if self._buffered < self.window:
            return None
        self._buffered = 0
        return self._decide(self._buffer.copy())

    def infer(self, frames: np.ndarray) -> int:
        """Frozen inference: the most likely decided context for a stack of frames (N, 84, 84) or
        (N, size, size), under a uniform prior. Nothing is updated and no context is created."""
        return int(np.argmax(self.log_likelihoods(frames)))

    def log_likelihoods(self, frames: np.ndarray) -> np.ndarray:
        """log p(frames | context k) for every decided context, shape (K,): the Polya predictive of the
        frames in order (not tempered). Nothing is updated."""
        if self.num_contexts == 0:
            raise ValueError("No context exists yet: observe at least one window of frames before inferring.")
        frames = np.asarray(frames)
        if frames.ndim != 3 or len(frames) == 0:
            raise ValueError(f"Expected a non-empty stack of frames (N, H, W), got shape {frames.shape}.")
        return self._scores(self._quantize(frames))[0][:self.num_contexts]

    def held_out_log_likelihood(self, frames: np.ndarray) -> float:
        """log p(frames) under the held-out model: a Dirichlet-multinomial with no counts, Polya predictive."""
        return self._scores(self._quantize(np.asarray(frames)))[1]

    def _quantize(self, frames: np.ndarray) -> np.ndarray:
        """(N, 2*size, 2*size) or (N, size, size) uint8 -> (N, size*size) gray levels, uint8."""
        if frames.dtype != np.uint8:
            raise ValueError(f"Frames must be uint8 (0..255), got {frames.dtype}.")
        n, s = len(frames), self.size
        if frames.shape[1:] == (2 * s, 2 * s):
            rows = frames.reshape(n, s, 2, 2 * s).astype(np.uint16)
            rows = rows[:, :, 0] + rows[:, :, 1]
            return self._pooled_levels[rows[:, :, 0::2] + rows[:, :, 1::2]].reshape(n, s * s)
        if frames.shape[1:] == (s, s):
            return self._pooled_levels[frames.astype(np.uint16) * 4].reshape(n, s * s)
        raise ValueError(f"Frame shape {frames.shape[1:]} is neither ({2 * s}, {2 * s}) nor ({s}, {s}).")

    def _earlier(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat (pixel, level) indices of frames of gray levels (T, P), and per frame and pixel how many earlier
        frames of the same stack had the same level there."""
        index = self._pixel_offsets + levels
        seen = np.zeros(self.counts.shape[1] * self.levels, dtype=np.int64)
        earlier = np.empty_like(index)
        for t in range(len(index)):
            earlier[t] = seen[index[t]]
            seen[index[t]] += 1
        return index, earlier

    def _scores(self, levels: np.ndarray) -> tuple[np.ndarray, float]:
        """Sequential Polya log-likelihood of frames of gray levels (T, P) under every context, shape (K,), and
        under the held-out model: the same predictive with no counts (the frames' own earlier ones only)."""
        index, earlier = self._earlier(levels)
        counts = self.counts.reshape(len(self.counts), self.counts.shape[1] * self.levels)  # (K may be 0)
        numerator = np.log(np.take(counts, index.reshape(-1), axis=1) + (earlier.reshape(-1) + self.alpha))
        pixels, steps = levels.shape[1], np.arange(len(levels))
        normalizer = pixels * np.log(self._totals[:, None] + steps[None] + self.levels * self.alpha).sum(axis=1)
        held_out = np.log(earlier + self.alpha).sum() - pixels * np.log(steps + self.levels * self.alpha).sum()
        return numerator.sum(axis=1) - normalizer, float(held_out)

    def _decide(self, levels: np.ndarray) -> int:
        scale = self.evidence_scale
        if len(self.counts) == 0:  # the first window starts the first context
            self._add_context(levels)
            self.log_posterior = np.zeros(1)
            self._context = 0
            self.windows_decided += 1
            return 0
        k, before = self.num_contexts, self._context
        s = self.switch_prior / (1 + self.windows_since_switch)
        post = np.exp(self.log_posterior)
        contexts, held_out = self._scores(levels)
        likelihoods = scale * contexts  # decided contexts, then the one being tried
        joint = np.log((1 - s) * post + s * (1 - post) / k) + likelihoods[:k]
        best = int(np.argmax(joint))
        if self._pending_new:  # the context the pending windows started competes as the new hypothesis
            joint_new = math.log(s / k) + likelihoods[k]
        else:
            joint_new = math.log(s / k) + scale * held_out
        room = self._pending_new or k < self.max_contexts
        if room and joint_new - self.new_context_margin > joint[best]:
            winner, joint_all = k, np.append(joint, joint_new)
        else:
            winner, joint_all = best, joint
        if winner == self._context:
            self._revert()
            self._update(winner, levels)
        else:
            self._propose(winner, levels)
        posterior = joint_all[:self.num_contexts]  # the filter's posterior over the decided contexts
        self.log_posterior = posterior - np.logaddexp.reduce(posterior)
        self.windows_since_switch = 0 if self._context != before else self.windows_since_switch + 1
        self.windows_decided += 1
        return self._context

    def _propose(self, winner: int, levels: np.ndarray) -> None:
        """A window preferring another context: pending until `persist` windows in a row agree."""
        starts_new = winner == self.num_contexts and not self._pending_new
        if self._pending_target is not None and winner != self._pending_target:
            self._revert()  # a different candidate: the earlier pending windows were noise
            starts_new = winner >= self.num_contexts
        if starts_new:
            self._add_context(levels)
            self._pending_new = True
            winner = len(self.counts) - 1
        elif self._pending_new and winner == len(self.counts) - 1:
            self._update(winner, levels)  # the context being tried learns from every window that prefers it
        self._pending_target = winner
        self._pending.append(levels)
        if len(self._pending) >= self.persist:
            self._confirm()

    def _confirm(self) -> None:
        target = self._pending_target
        if not self._pending_new:  # an existing context: it gets the pending windows now
            for levels in self._pending:
                self._update(target, levels)
        self._context, self._pending, self._pending_target, self._pending_new = target, [], None, False

    def _revert(self) -> None:
        """The pending change did not persist: its windows go to the decided context, a context they
        started is removed."""
        if self._pending_target is None:
            return
        if self._pending_new:
            self.counts, self._totals = self.counts[:-1], self._totals[:-1]
        for levels in self._pending:
            self._update(self._context, levels)
        self._pending, self._pending_target, self._pending_new = [], None, False

    def _add_context(self, levels: np.ndarray) -> None:
        self.counts = np.concatenate([self.counts, np.zeros((1, *self.counts.shape[1:]))])
        self._totals = np.append(self._totals, 0.0)
        self._update(len(self.counts) - 1, levels)

    def _update(self, k: int, levels: np.ndarray) -> None:
        """Add a window to context k's counts; past max_count frames, scale them back to max_count."""
        flat = self.counts[k].reshape(-1)  # a view
        flat += np.bincount((self._pixel_offsets + levels).reshape(-1), minlength=flat.size)
        self._totals[k] += len(levels)
        if self._totals[k] > self.max_count:
            self.counts[k] *= self.max_count / self._totals[k]
            self._totals[k] = float(self.max_count)

    def _config(self) -> dict:
        return {"model": self.MODEL, "levels": self.levels, "window": self.window, "size": self.size,
                "alpha": self.alpha, "switch_prior": self.switch_prior, "max_contexts": self.max_contexts,
                "new_context_margin": self.new_context_margin, "max_count": self.max_count,
                "evidence_scale": self.evidence_scale, "persist": self.persist}

    def state_dict(self) -> dict:
        return {"config": self._config(), "counts": self.counts.copy(), "totals": self._totals.copy(),
                "log_posterior": self.log_posterior.copy(), "context": self._context,
                "windows_since_switch": self.windows_since_switch, "windows_decided": self.windows_decided,
                "frames_observed": self.frames_observed, "buffer": self._buffer[:self._buffered].copy(),
                "pending": np.array(self._pending, dtype=np.uint8).reshape(-1, self.window, self.counts.shape[1]),
                "pending_target": -1 if self._pending_target is None else self._pending_target,
                "pending_new": self._pending_new}

    def load_state_dict(self, state: dict) -> None:
        saved = state["config"]
        if saved.get("model") != self.MODEL:
            raise ValueError("This checkpoint's task inference was written by an earlier Forget-Me-Not (a uniform "
                             "held-out model, integer counts): it cannot continue with this one. Resume it with the "
                             "version of the code that started it, or start the run again.")
        if saved != self._config():
            raise ValueError(f"This ForgetMeNot was built with {self._config()}, the state with {saved}.")
        self.counts = np.array(state["counts"], dtype=np.float64)
        self._totals = np.array(state["totals"], dtype=np.float64)
        self.log_posterior = np.array(state["log_posterior"], dtype=np.float64)
        self._context = state["context"]
        self.windows_since_switch, self.windows_decided, self.frames_observed = (
            int(state["windows_since_switch"]), int(state["windows_decided"]), int(state["frames_observed"]))
        self._buffered = len(state["buffer"])
        self._buffer[:self._buffered] = state["buffer"]
        self._pending = [np.array(w, dtype=np.uint8) for w in state["pending"]]
        target = int(state["pending_target"])
        self._pending_target = None if target < 0 else target
        self._pending_new = bool(state["pending_new"])
