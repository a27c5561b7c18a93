"""Plasticity diagnostics: what a continual learner loses besides its old games.

Computed on a batch of held-out replayed states of the current task (the retention probe's kind
of sample), with no gradient and no change to the network:

- dormant-neuron fraction per hidden layer (ReDo, Sokar et al. 2023): a unit's score is its mean
  |activation| over the batch (for a convolution, over the batch and every position) divided by
  the mean of that over the layer's units; the unit is dormant when its score is <= tau. tau = 0
  counts units that never fire; tau = 0.1 is ReDo's threshold for recycling.
- effective rank of the penultimate features (the hidden layer the Q head reads): exp of the
  entropy of the singular values normalised to sum 1 (Roy & Vetterli 2007); stable rank:
  sum of squared singular values over the largest squared one.
- per layer, the weights' L2 norm and their L2 distance from the network's initial weights
  (growing weights and drifting far from the initialisation go with lost plasticity, Dohare et al.
  2024); the gradient norm comes from the learner's own updates (`losses/grad_norm`).
- policy churn between two measurements: the fraction of the held-out states whose greedy action
  changed, and the mean |dQ| over states and actions.

The activations read are the outputs of the network's ReLUs, in order: `conv1`, `conv2`, `conv3`
(the convolutions) and `fc` (the hidden layer, the penultimate features). The methods that act on
the weights (ReDo, shrink-and-perturb, resets) are in agent/plasticity_methods.py; when the
trainer measures and acts, in agent/plasticity_monitor.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

TAUS = (0.0, 0.1)


def hidden_activations(network: nn.Module, states: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The output of every ReLU of `network` on `states` (named conv1, conv2, ... then fc for the last one),
    and the Q-values; float32, no gradient."""
    relus = [m for m in network.modules() if isinstance(m, nn.ReLU)]
    outputs: list[torch.Tensor] = []
    hooks = [relu.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().float())) for relu in relus]
    try:
        with torch.no_grad():
            q_values = network(states).float()
    finally:
        for hook in hooks:
            hook.remove()
    names = [f"conv{i + 1}" for i in range(len(outputs) - 1)] + ["fc"]
    return dict(zip(names, outputs)), q_values


def unit_scores(activation: torch.Tensor) -> torch.Tensor:
    """ReDo's score per unit: mean |activation| over the batch (and positions), over the layer's mean of it."""
    per_unit = activation.abs().transpose(0, 1).reshape(activation.shape[1], -1).mean(dim=1)
    layer_mean = per_unit.mean()
    if layer_mean == 0:
        return torch.zeros_like(per_unit)  # a layer that never fires: every unit is dormant
    return per_unit / layer_mean


def dormant_fraction(activation: torch.Tensor, tau: float) -> float:
    """The fraction of the layer's units whose score is <= tau."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}.")
    return float((unit_scores(activation) <= tau).float().mean())


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy) of the singular values of a (samples x features) matrix, normalised to sum 1."""
    singular = torch.linalg.svdvals(features.double())
    total = singular.sum()
    if total == 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(features: torch.Tensor) -> float:
    """sum(sigma^2) / max(sigma^2) of a (samples x features) matrix: ||A||_F^2 / ||A||_2^2."""
    singular = torch.linalg.svdvals(features.double())
    if singular.numel() == 0 or singular[0] == 0:
        return 0.0
    return float((singular**2).sum() / singular[0] ** 2)


def weight_layers(network: nn.Module) -> dict[str, nn.Module]:
    """The network's convolutions and linear layers, named conv1.. and fc1.. in order."""
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    return {**{f"conv{i + 1}": m for i, m in enumerate(convs)}, **{f"fc{i + 1}": m for i, m in enumerate(linears)}}


def initial_weights(network: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every layer's weight, to measure the distance travelled from it later."""
    return {name: layer.weight.detach().clone() for name, layer in weight_layers(network).items()}


def weight_stats(network: nn.Module, initial: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per layer: the weight's L2 norm and its L2 distance from `initial`."""
    stats = {}
    for name, layer in weight_layers(network).items():
        weight = layer.weight.detach().float()
        stats[name] = {"norm": float(weight.norm()),
                       "distance": float((weight - initial[name].to(weight.device).float()).norm())}
    return stats


def churn(q_before: torch.Tensor, q_after: torch.Tensor) -> dict[str, float]:
    """Between two measurements on the same states: the fraction of greedy actions that changed, mean |dQ|."""
    changed = (q_before.argmax(dim=1) != q_after.argmax(dim=1)).float().mean()
    return {"greedy_changed": float(changed), "mean_abs_dq": float((q_after - q_before).abs().mean())}


def diagnose(network: nn.Module, states: torch.Tensor, initial: dict[str, torch.Tensor],
             previous_q: torch.Tensor | None = None, taus: Iterable[float] = TAUS) -> tuple[dict[str, float],
                                                                                          torch.Tensor]:
    """Every diagnostic as flat `name: value` pairs (the TensorBoard tags under plasticity/ and the CSV
    columns), and the Q-values on `states` (the next measurement's churn baseline)."""
    activations, q_values = hidden_activations(network, states)
    values: dict[str, float] = {}
    for tau in taus:
        for name, activation in activations.items():
            values[f"dormant_tau{tau:g}/{name}"] = dormant_fraction(activation, tau)
        units = sum(a.shape[1] for a in activations.values())
        values[f"dormant_tau{tau:g}/all"] = sum(
            values[f"dormant_tau{tau:g}/{name}"] * a.shape[1] for name, a in activations.items()) / units
    features = activations["fc"]
    values["effective_rank"] = effective_rank(features)
    values["stable_rank"] = stable_rank(features)
    for name, stats in weight_stats(network, initial).items():
        values[f"weight_norm/{name}"] = stats["norm"]
        values[f"weight_distance/{name}"] = stats["distance"]
    if previous_q is not None and previous_q.shape == q_values.shape:
        for key, value in churn(previous_q, q_values).items():
            values[f"churn/{key}"] = value
    else:
        values["churn/greedy_changed"] = values["churn/mean_abs_dq"] = math.nan
    return values, q_values
