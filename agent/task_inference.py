"""Which task is this? Forget-Me-Not context inference from the frames alone.

Kirkpatrick et al. (2017, supplementary) let EWC run without task labels by inferring the task with the
Forget-Me-Not process (Milan et al. 2016): the task context is the hidden state of an HMM, and each context
has a Dirichlet-multinomial generative model of the pixels of downsampled frames. Frames come in windows of
`window` observations; on each window the context with the highest posterior keeps the window in its counts
and the others stay as they were. A held-out uniform model competes too: when it wins, the window starts a
new context. The trainer feeds frames with `observe` and uses the decided context in place of the game label.

Choices made here:
- Frames: 84x84 uint8 -> `size` x `size` by 2x2 mean pooling (frames already `size` x `size` are taken as
  they are), then `levels` gray levels, value * levels // 256 (in integers: sum of the 4 pixels * levels // 1024).
- Pixels are independent given the context. Context k scores a window with the Polya (Dirichlet-multinomial)
  predictive: each frame, one after another, gets (n_k[p, x] + alpha) / (N_k[p] + levels * alpha) per pixel p,
  with the window's earlier frames added to the counts. A window's score is thus its marginal likelihood given
  the context's past counts. The uniform model scores levels^-1 per pixel and frame.
- HMM filtering, one step per window. From the filtered posterior post over the K existing contexts, the
  task stays with probability 1 - s, or switches with probability s spread evenly over the K other
  hypotheses (K - 1 other contexts and a new one): prior_k = (1 - s) post_k + s (1 - post_k) / K and
  prior_new = s / K. The switch probability decays with the time spent in the current context:
  s = switch_prior / (1 + windows since the decided context last changed). With 4 x 1764 pixel-frames per
  window the likelihoods differ by hundreds to thousands of nats, so the posterior is nearly one-hot and the
  prior only tips near-ties: that is expected. The posterior is renormalised (log-sum-exp) after every
  window and every prior is at least s / K > 0, so it stays finite and bounded however long the run.
- The winner is the argmax of the posterior. The new-context hypothesis wins only if it beats the best
  existing context by `new_context_margin` nats (0 by default; raise it if noise creates contexts). With
  `max_contexts` contexts already, a window the new hypothesis would win goes to the best existing context,
  and the new hypothesis's mass is dropped from the posterior.
- Counts are int64 and never grow without bound: when a pixel's total N_k[p] passes `max_count`, that
  pixel's counts are halved (integer division). A context thus weighs roughly its last max_count/2 to
  max_count frames at full weight and older ones exponentially less, so it stays able to adapt, while an
  unseen gray level still costs about log(alpha / max_count) ~ -7 nats per pixel against the uniform model's
  -log(levels) ~ -2: a switch stays loud however long a context has been trained.
- No randomness: ties go to the lowest context id. `state_dict` holds numpy arrays and Python scalars only
  and resumes bit for bit, the partial window included.

What it cannot do, by construction: a new context is created only where the uniform model beats the best
existing one, i.e. where roughly a quarter to a third or more of the pooled pixels show gray levels that
context rarely saw. Games on the same black background can share a context: on random play of the CORA
cycle (400 frames a game, twice round), alpha = 0.5 put SpaceInvaders, StarGunner, most of BeamRider and
Krull's revisit in one context; alpha = 0.05 separated all but SpaceInvaders and StarGunner (93% of their
pooled pixels share their usual level), at the price of two contexts for Krull (its opening frames differ)
and a few short-lived ones inside BeamRider. Pong and Breakout separate at either alpha. A window that
straddles a switch half and half fits no context well and may start a context that nothing returns to.

numpy only; knows nothing about the agent or the environments.
"""

from __future__ import annotations

import math

import numpy as np


class ForgetMeNot:
    def __init__(self, levels: int = 8, window: int = 4, size: int = 42, alpha: float = 0.5,
                 switch_prior: float = 0.1, max_contexts: int = 16, new_context_margin: float = 0.0,
                 max_count: int = 1000):
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
            raise ValueError(f"new_context_margin must be >= 0 (nats), got {new_context_margin}.")
        if max_count < window:
            raise ValueError(f"max_count must be at least the window ({window}), got {max_count}.")
        self.levels, self.window, self.size, self.alpha = levels, window, size, float(alpha)
        self.switch_prior, self.max_contexts = float(switch_prior), max_contexts
        self.new_context_margin, self.max_count = float(new_context_margin), max_count
        pixels = size * size
        self._pixel_offsets = np.arange(pixels, dtype=np.int64) * levels  # flat index of (pixel, level 0)
        # The gray level of a 2x2 block from the sum of its 4 pixels: mean * levels // 256.
        self._pooled_levels = (np.arange(4 * 255 + 1) * levels // 1024).astype(np.uint8)
        self.counts = np.zeros((0, pixels, levels), dtype=np.int64)  # n[k, pixel, level]
        self._totals = np.zeros((0, pixels), dtype=np.int64)  # N[k, pixel]: derived from counts
        self._window_normalizers = np.zeros(0)  # derived from the totals: the Polya denominators of a window
        self.log_posterior = np.zeros(0, dtype=np.float64)  # filtered, over the existing contexts
        self._context: int | None = None
        self.windows_since_switch = 0
        self.windows_decided = 0  # decisions made
        self.frames_observed = 0  # frames observed
        self._buffer = np.zeros((window, pixels), dtype=np.uint8)  # the partial window, as gray levels
        self._buffered = 0

    @property
    def context(self) -> int | None:
        """The context of the last decided window (None before the first decision)."""
        return self._context

    @property
    def num_contexts(self) -> int:
        return len(self.counts)

    def observe(self, frame: np.ndarray) -> int | None:
        """Feed one uint8 frame (84x84, or already size x size). Every `window` frames, decide and return
        the window's context (0, 1, ...); between decisions return None."""
        self._buffer[self._buffered] = self._quantize(np.asarray(frame)[None])[0]
        self._buffered += 1
        self.frames_observed += 1
        if self._buffered < self.window:
            return None
        self._buffered = 0
        return self._decide(self._buffer)

    def infer(self, frames: np.ndarray) -> int:
        """Frozen inference: the most likely existing context for a stack of frames (N, 84, 84) or
        (N, size, size), under a uniform prior. Nothing is updated and no context is created."""
        return int(np.argmax(self.log_likelihoods(frames)))

    def log_likelihoods(self, frames: np.ndarray) -> np.ndarray:
        """log p(frames | context k) for every existing context, shape (K,): the Polya predictive of the
        frames in order. Nothing is updated."""
        if self.num_contexts == 0:
            raise ValueError("No context exists yet: observe at least one window of frames before inferring.")
        frames = np.asarray(frames)
        if frames.ndim != 3 or len(frames) == 0:
            raise ValueError(f"Expected a non-empty stack of frames (N, H, W), got shape {frames.shape}.")
        return self._log_likelihoods(self._quantize(frames))

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

    def _log_likelihoods(self, levels: np.ndarray) -> np.ndarray:
        """Sequential Polya log-likelihood of frames of gray levels (T, P) under every context, shape (K,)."""
        index = self._pixel_offsets + levels  # (T, P) int64: flat (pixel, level) indices
        seen = np.zeros(self.counts.shape[1] * self.levels, dtype=np.int64)  # counts of the frames scored so far
        earlier = np.empty_like(index)  # per frame and pixel: earlier frames with the same level
        for t in range(len(index)):
            earlier[t] = seen[index[t]]
            seen[index[t]] += 1
        counts = self.counts.reshape(len(self.counts), -1)
        numerator = np.log(np.take(counts, index.reshape(-1), axis=1) + (earlier.reshape(-1) + self.alpha))
        if len(levels) == self.window:
            return numerator.sum(axis=1) - self._window_normalizers
        return numerator.sum(axis=1) - self._normalizers(self._totals, len(levels))

    def _normalizers(self, totals: np.ndarray, steps: int) -> np.ndarray:
        """sum over pixels p and frames t < steps of log(N[k, p] + t + levels * alpha), shape (K,)."""
        return sum(np.log(totals + (t + self.levels * self.alpha)).sum(axis=1) for t in range(steps))

    def _decide(self, levels: np.ndarray) -> int:
        k = self.num_contexts
        s = self.switch_prior / (1 + self.windows_since_switch)
        uniform = -levels.size * math.log(self.levels)
        if k == 0:  # the first window starts the first context
            joint, joint_new, best, create = np.zeros(0), uniform, -1, True
        else:  # log prior + log likelihood of each hypothesis
            post = np.exp(self.log_posterior)
            joint = np.log((1 - s) * post + s * (1 - post) / k) + self._log_likelihoods(levels)
            joint_new = math.log(s / k) + uniform
            best = int(np.argmax(joint))
            create = k < self.max_contexts and joint_new - self.new_context_margin > joint[best]
        if create:
            joint = np.append(joint, joint_new)
            winner = k
            self.counts = np.concatenate([self.counts, np.zeros((1, *self.counts.shape[1:]), np.int64)])
            self._totals = np.concatenate([self._totals, np.zeros((1, self._totals.shape[1]), np.int64)])
            self._window_normalizers = np.append(self._window_normalizers, 0.0)
        else:
            winner = best
        self.log_posterior = joint - np.logaddexp.reduce(joint)
        self._update(winner, levels)
        self.windows_since_switch = 0 if winner != self._context else self.windows_since_switch + 1
        self._context = winner
        self.windows_decided += 1
        return winner

    def _update(self, k: int, levels: np.ndarray) -> None:
        """Add a window to context k's counts; halve the counts of pixels past max_count."""
        counts = self.counts[k]  # a view
        flat = counts.reshape(-1)  # a view too
        flat += np.bincount((self._pixel_offsets + levels).reshape(-1), minlength=flat.size)
        self._totals[k] += len(levels)
        full = self._totals[k] > self.max_count
        if full.any():
            counts[full] //= 2
            self._totals[k, full] = counts[full].sum(axis=1)
        self._window_normalizers[k] = self._normalizers(self._totals[k:k + 1], self.window)[0]

    def _config(self) -> dict:
        return {"levels": self.levels, "window": self.window, "size": self.size, "alpha": self.alpha,
                "switch_prior": self.switch_prior, "max_contexts": self.max_contexts,
                "new_context_margin": self.new_context_margin, "max_count": self.max_count}

    def state_dict(self) -> dict:
        return {"config": self._config(), "counts": self.counts.copy(), "log_posterior": self.log_posterior.copy(),
                "context": self._context, "windows_since_switch": self.windows_since_switch,
                "windows_decided": self.windows_decided, "frames_observed": self.frames_observed,
                "buffer": self._buffer[:self._buffered].copy()}

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self._config():
            raise ValueError(f"This ForgetMeNot was built with {self._config()}, the state with {state['config']}.")
        self.counts = np.array(state["counts"], dtype=np.int64)
        self._totals = self.counts.sum(axis=2)
        self._window_normalizers = self._normalizers(self._totals, self.window)
        self.log_posterior = np.array(state["log_posterior"], dtype=np.float64)
        self._context = state["context"]
        self.windows_since_switch, self.windows_decided, self.frames_observed = (
            int(state["windows_since_switch"]), int(state["windows_decided"]), int(state["frames_observed"]))
        self._buffered = len(state["buffer"])
        self._buffer[:self._buffered] = state["buffer"]
