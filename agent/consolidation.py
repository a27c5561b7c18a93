"""Consolidation against forgetting: quadratic anchors set at each game switch.

The consolidator does not know it serves a DQN: it receives a network and states.

    penalty = sum over anchors k active now of  lambda/2 sum_i F_k,i (theta_i - theta*_k,i)^2

Methods:
- none: no anchor (plain fine-tuning).
- l2: one anchor per game with uniform importance F = 1.
- ewc: one anchor per game (Kirkpatrick et al. 2017) with the diagonal Fisher at the
  switch; a revisit refreshes the game's anchor; the current game's anchor is
  inactive while that game is trained.
- online_ewc: one running anchor (Schwarz et al. 2018): F <- gamma F + F_new, theta*
  the latest parameters; always active.

However many anchors are active, the penalty costs one pass over the parameters: the
active anchors are combined once whenever the active set changes, using
sum_k F_k (theta - a_k)^2 = A (theta - mu)^2 + c with A = sum_k F_k,
mu = sum_k F_k a_k / A and c = sum_k F_k (a_k - mu)^2 (computed in float64).

Only the shared parameters are anchored (`shared_parameters`): per-task gains and biases
(`network.task_params`) are trained by their own task alone and need no protection. The
anchors' keys are whatever the loop calls a task: a game, or an inferred context.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from agent.fisher import PerSampleLoss, estimate_fisher, shared_parameters

METHODS = ("none", "l2", "ewc", "online_ewc")
NORMALIZATIONS = ("none", "mean", "max")
ONLINE = "online"  # the key of online_ewc's single running anchor
Tensors = dict[str, torch.Tensor]


class Consolidator:
    def __init__(self, method: str = "ewc", lambda_: float = 400.0, estimator: str = "expected",
                 normalize: str = "none", online_gamma: float = 1.0, min_steps_to_protect: int = 0,
                 fisher_batch_size: int = 32, full_strength_steps: int = 0):
        if method not in METHODS:
            raise ValueError(f"Unknown consolidation method {method!r}: use one of {METHODS}.")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"Unknown normalisation {normalize!r}: use one of {NORMALIZATIONS}.")
        self.method = method
        self.lambda_ = lambda_
        self.estimator = estimator
        self.normalize = normalize
        self.online_gamma = online_gamma
        self.min_steps_to_protect = min_steps_to_protect
        self.fisher_batch_size = fisher_batch_size
        self.full_strength_steps = full_strength_steps  # 0: every anchor at full strength (the paper)
        # key (a game, or ONLINE) -> {"params": theta*, "importance": F}
        self.anchors: dict[str, dict[str, Tensors]] = {}
        self._combined: tuple[str | None, Tensors, Tensors, float] | None = None
        self.version = 0  # changes whenever the anchors do (a captured CUDA graph of the penalty is then stale)

    @property
    def needs_states(self) -> bool:
        """Whether `consolidate` uses the replayed states (ewc and online_ewc estimate a Fisher)."""
        return self.method in ("ewc", "online_ewc")

    def active_anchors(self, current_game: str | None) -> list[str]:
        return [key for key in self.anchors if key != current_game]

    def consolidate(self, game: str, model: nn.Module, states: torch.Tensor | None = None,
                    steps_trained: int | None = None, per_sample_loss: PerSampleLoss | None = None,
                    generator: torch.Generator | None = None,
                    poll: Callable[[], None] | None = None) -> dict[str, float]:
        """Store or refresh the anchor of `game`, which is being left. Returns Fisher statistics.

        `poll` is passed to the Fisher estimate: if it raises, no anchor changes."""
        if self.method == "none":
            return {}
        if steps_trained is not None and steps_trained < self.min_steps_to_protect:
            return {}
        params = {name: p.detach().clone() for name, p in shared_parameters(model).items()}
        if self.method == "l2":
            importance = {name: torch.ones_like(p) for name, p in params.items()}
        else:
            if states is None:
                raise ValueError(f"{self.method} needs replayed states of {game!r} to estimate the Fisher.")
            importance = estimate_fisher(model, states, self.estimator, per_sample_loss,
                                         self.fisher_batch_size, generator, poll)
            importance = self._normalized(importance)
        if self.full_strength_steps and steps_trained is not None and steps_trained < self.full_strength_steps:
            # A task trained briefly (an inferred context that lasted a short while) weighs in proportion.
            share = steps_trained / self.full_strength_steps
            importance = {name: value * share for name, value in importance.items()}
        stats = fisher_statistics(importance) if self.method != "l2" else {}
        if self.method == "online_ewc":
            previous = self.anchors.get(ONLINE)
            if previous is not None:
                importance = {name: self.online_gamma * previous["importance"][name] + value
                              for name, value in importance.items()}
            self.anchors[ONLINE] = {"params": params, "importance": importance}
        else:
            self.anchors.pop(game, None)  # a revisit refreshes: the anchor moves to the newest place
            self.anchors[game] = {"params": params, "importance": importance}
        self._combined = None
        self.version += 1
        return stats

    def _normalized(self, fisher: Tensors) -> Tensors:
        if self.normalize == "none":
            return fisher
        flat = torch.cat([value.flatten() for value in fisher.values()])
        scale = flat.mean() if self.normalize == "mean" else flat.max()
        if scale <= 0:
            return fisher
        return {name: value / scale for name, value in fisher.items()}

    def penalty(self, model: nn.Module, current_game: str | None) -> torch.Tensor:
        """lambda/2 sum over active anchors of F (theta - theta*)^2, as a scalar with gradient."""
        device = next(model.parameters()).device
        if self.method == "none" or not self.active_anchors(current_game) or self.lambda_ == 0:
            return torch.zeros((), device=device)
        weights, centres, constant = self._combine(current_game)
        total = torch.zeros((), device=device)
        for name, param in shared_parameters(model).items():
            total = total + (weights[name] * (param - centres[name]).square()).sum()
        return 0.5 * self.lambda_ * (total + constant.to(total.dtype))

    def _combine(self, current_game: str | None) -> tuple[Tensors, Tensors, torch.Tensor]:
        if self._combined is None or self._combined[0] != current_game:
            active = [self.anchors[key] for key in self.active_anchors(current_game)]
            weights, centres, constant = {}, {}, 0.0
            for name in active[0]["params"]:
                importance = torch.stack([a["importance"][name].double() for a in active])
                anchor = torch.stack([a["params"][name].double() for a in active])
                total = importance.sum(0)
                centre = torch.where(total > 0, (importance * anchor).sum(0) / total.clamp_min(1e-300),
                                     anchor[-1])
                # A tensor, not a float: no device-to-host sync when the active set changes.
                constant = constant + (importance * (anchor - centre).square()).sum()
                dtype = active[0]["params"][name].dtype
                weights[name] = total.to(dtype)
                centres[name] = centre.to(dtype)
            self._combined = (current_game, weights, centres, constant)
        return self._combined[1], self._combined[2], self._combined[3]

    def state_dict(self) -> dict:
        return {"method": self.method, "anchors": self.anchors}  # dicts keep their order: oldest anchor first

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore the anchors, on `device` (the network's: it may differ from where they were saved)."""
        if state["method"] != self.method:
            raise ValueError(f"The checkpoint's consolidation method is {state['method']!r}, "
                             f"not {self.method!r}.")
        self.anchors = {key: {part: {name: value.to(device) for name, value in tensors.items()}
                              for part, tensors in anchor.items()}
                        for key, anchor in state["anchors"].items()}
        self._combined = None
        self.version += 1


def fisher_statistics(fisher: Tensors) -> dict[str, float]:
    flat = torch.cat([value.flatten().float() for value in fisher.values()])
    return {
        "mean": flat.mean().item(),
        "max": flat.max().item(),
        "median": flat.median().item(),
        "frac_above_1e-3_of_max": (flat > 1e-3 * flat.max()).float().mean().item(),
    }
