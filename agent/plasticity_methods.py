"""Methods that restore plasticity by acting on the weights, each touching only what it says.

- `recycle_dormant` (ReDo, Sokar et al. 2023): dormant units get fresh incoming weights, zero
  outgoing weights and zeroed Adam moments, every `plasticity.redo_every` updates.
- `shrink_and_perturb` (Ash & Adams 2020): weights <- shrink * weights + perturb * a fresh
  initialisation, at a switch. Adam's moments are kept (the paper's warm start keeps the optimiser).
- `reset_last_layers` (Nikishin et al. 2022, the primacy bias): the last k weight layers
  re-initialised, their Adam moments zeroed, at a switch.

"Fresh" is PyTorch's default initialisation of the layer (what the network was built with). Every
change is in place, so a captured CUDA graph of the update stays valid. Per-task gains and biases
(network.task_params) are left as they are. The target network is left too: it is synced from the
online one on its own schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from agent.plasticity import hidden_activations, unit_scores, weight_layers


def fresh_weight(layer: nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
    """A weight drawn as PyTorch initialises a Conv2d or Linear layer (Kaiming uniform, a = sqrt(5))."""
    fresh = torch.empty(layer.weight.shape)  # drawn on the CPU: its generator is in the checkpoint, CUDA's is not
    nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
    return fresh.to(layer.weight.device)


def fresh_bias(layer: nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bias drawn as PyTorch initialises one: uniform in +-1/sqrt(fan_in)."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    fresh = torch.empty(layer.bias.shape)
    return nn.init.uniform_(fresh, -bound, bound, generator=generator).to(layer.bias.device)


@torch.no_grad()
def recycle_dormant(network: nn.Module, optimizer: torch.optim.Optimizer, states: torch.Tensor, tau: float,
                    generator: torch.Generator | None = None) -> dict[str, int]:
    """ReDo (Sokar et al. 2023): every hidden unit whose score on `states` is <= tau gets fresh incoming
    weights (PyTorch's default initialisation, as the layers were built, and a zero bias), zero outgoing
    weights (so the network's output does not change at the moment of recycling), and Adam's moments of
    exactly those entries set to zero. Nothing else is touched. Returns the number recycled per layer.

    The layers are the network's convolutions and linear layers in order; a unit of layer l is an output
    channel (or unit) of l, and its outgoing weights are the matching input channel of l + 1 (for the
    convolution before the first linear layer, the flattened block of that channel's positions)."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}.")
    activations, _ = hidden_activations(network, states)
    layers = list(weight_layers(network).values())
    state = getattr(optimizer, "state", {})
    # Scores from one forward pass, before anything changes; all incoming weights first, then the outgoing
    # ones, so a unit recycled in two adjacent layers still ends with zero weight between them.
    plan = [(name, (unit_scores(activation) <= tau).nonzero().ravel(), layer, following)
            for (name, activation), layer, following in zip(activations.items(), layers, layers[1:])]
    for _, dormant, layer, _ in plan:
        if dormant.numel():
            fresh = fresh_weight(layer, generator)
            layer.weight[dormant] = fresh[dormant].to(layer.weight.dtype)
            _zero_moments(state.get(layer.weight), lambda t, d=dormant: t.__setitem__(d, 0))
            if layer.bias is not None:
                layer.bias[dormant] = 0.0
                _zero_moments(state.get(layer.bias), lambda t, d=dormant: t.__setitem__(d, 0))
    for _, dormant, layer, following in plan:
        if dormant.numel():
            columns = _outgoing_columns(dormant, layer, following)
            following.weight[:, columns] = 0.0
            _zero_moments(state.get(following.weight), lambda t, c=columns: t.__setitem__((slice(None), c), 0))
    return {name: int(dormant.numel()) for name, dormant, _, _ in plan}


def _outgoing_columns(dormant: torch.Tensor, layer: nn.Module, following: nn.Module) -> torch.Tensor:
    """The input indices of `following` fed by the dormant units of `layer`."""
    if isinstance(following, nn.Linear) and isinstance(layer, nn.Conv2d):
        positions = following.in_features // layer.out_channels  # Flatten: channel-major blocks of positions
        return (dormant[:, None] * positions + torch.arange(positions, device=dormant.device)).ravel()
    return dormant


def _zero_moments(param_state: dict | None, zero) -> None:
    """Zero Adam's first and second moments (where the optimiser has them yet) at the recycled entries."""
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if param_state and key in param_state:
            zero(param_state[key])


@torch.no_grad()
def shrink_and_perturb(network: nn.Module, shrink: float, perturb: float,
                       generator: torch.Generator | None = None) -> None:
    """Every Conv2d and Linear weight and bias: theta <- shrink * theta + perturb * a fresh initialisation."""
    for layer in weight_layers(network).values():
        layer.weight.mul_(shrink).add_(fresh_weight(layer, generator).to(layer.weight.dtype), alpha=perturb)
        if layer.bias is not None:
            layer.bias.mul_(shrink).add_(fresh_bias(layer, generator).to(layer.bias.dtype), alpha=perturb)


@torch.no_grad()
def reset_last_layers(network: nn.Module, optimizer: torch.optim.Optimizer, count: int,
                      generator: torch.Generator | None = None) -> list[str]:
    """Re-initialise the last `count` Conv2d/Linear layers and zero their Adam moments; their names."""
    layers = list(weight_layers(network).items())[-count:]
    state = getattr(optimizer, "state", {})
    for _, layer in layers:
        layer.weight.copy_(fresh_weight(layer, generator))
        _zero_moments(state.get(layer.weight), lambda t: t.zero_())
        if layer.bias is not None:
            layer.bias.copy_(fresh_bias(layer, generator))
            _zero_moments(state.get(layer.bias), lambda t: t.zero_())
    return [name for name, _ in layers]
