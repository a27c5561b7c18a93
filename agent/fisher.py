"""Exact diagonal Fisher information of a network's outputs, batched.

Every estimator is the mean over states of *per-sample* squared gradients,
F_i = 1/N sum_n sum_k (d/d theta_i  c_nk . f(x_n))^2, for one or more output
cotangents c_nk per state (never the square of a minibatch-mean gradient). The
network's outputs f(x) are read as logits of a policy pi = softmax(f(x)):

- expected:  sum over all actions a of pi_a (grad log pi_a)^2, the exact expectation;
             cotangents sqrt(pi_a) (e_a - pi), one per action.
- sampled:   (grad log pi_a)^2 for one action a ~ pi per state; cotangent e_a - pi.
- empirical: (grad loss_n)^2 for a per-sample loss of the outputs (e.g. the TD loss);
             cotangent d loss_n / d f(x_n).

Per-sample gradients are never materialised for the whole network. One forward pass
records each layer's input; one backward pass per cotangent gives each layer's output
gradients; the per-sample squared weight gradients follow per layer, for all
cotangents at once: Linear: (sum_k g_k^2)^T (x^2); Conv2d: the square of the
per-sample sum over positions of g x_unfolded^T. Supported parameterised layers: nn.Linear and nn.Conv2d (groups=1).

Modules marked `task_specific = True` (per-task gains and biases, agent/networks.py) are
left out: only the shared parameters (`shared_parameters`) get a Fisher and a penalty.
A layer's output gradient is taken where the layer writes it, before any task-specific
module that follows, so the shared weights' Fisher is exact under the current task's
gains and biases.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ESTIMATORS = ("expected", "sampled", "empirical")
PerSampleLoss = Callable[[torch.Tensor, slice], torch.Tensor]


def _task_specific_prefixes(model: nn.Module) -> list[str]:
    return [name + "." for name, module in model.named_modules() if getattr(module, "task_specific", False)]


def shared_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters consolidation protects: all but those of `task_specific` modules."""
    skipped = tuple(_task_specific_prefixes(model))
    return {name: param for name, param in model.named_parameters() if not (skipped and name.startswith(skipped))}


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = []
    skipped = tuple(_task_specific_prefixes(model))
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own or getattr(module, "task_specific", False) or (skipped and (name + ".").startswith(skipped)):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise TypeError(f"Layer {name!r}: grouped convolutions are not supported by the batched Fisher.")
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"Layer {name!r} ({type(module).__name__}) has parameters the batched Fisher "
                            "cannot handle: only nn.Linear and nn.Conv2d are supported.")
        layers.append((name, module))
    return layers


def _squared_grads(module: nn.Module, inputs: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample squared gradients of the layer's parameters, summed over samples and cotangents.

    `grad_out` holds the layer's output gradients for K cotangents: (K, N, *output shape).
    """
    result = {}
    if isinstance(module, nn.Linear):
        squared = grad_out.square().sum(0)  # (N, O): the K cotangents share the input x_n
        result["weight"] = squared.T @ inputs.square()
        if module.bias is not None:
            result["bias"] = squared.sum(0)
        return result
    unfolded = F.unfold(inputs, module.kernel_size, dilation=module.dilation,
                        padding=module.padding, stride=module.stride)  # (N, C*k*k, L)
    k, n, o = grad_out.shape[:3]
    grad_out = grad_out.flatten(3).transpose(0, 1).reshape(n, k * o, -1)  # (N, K*O, L)
    per_sample = torch.bmm(grad_out, unfolded.transpose(1, 2))  # (N, K*O, C*k*k): one bmm for all K
    result["weight"] = per_sample.square_().view(n, k, o, -1).sum((0, 1)).view_as(module.weight)
    if module.bias is not None:
        result["bias"] = grad_out.sum(2).square().view(n, k, o).sum((0, 1))
    return result


def _cotangents(outputs: torch.Tensor, estimator: str, per_sample_loss: PerSampleLoss | None,
                rows: slice, generator: torch.Generator | None) -> list[torch.Tensor]:
    if estimator == "empirical":
        if per_sample_loss is None:
            raise ValueError("The empirical Fisher needs per_sample_loss(outputs, rows) -> (N,) losses.")
        leaf = outputs.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(per_sample_loss(leaf, rows).sum(), leaf)
        return [grad]
    probs = torch.softmax(outputs.detach().double(), dim=1)
    if estimator == "sampled":
        actions = torch.multinomial(probs.cpu(), 1, generator=generator).to(outputs.device).squeeze(1)
        return [(F.one_hot(actions, probs.shape[1]) - probs).to(outputs.dtype)]
    if estimator == "expected":
        eye = torch.eye(probs.shape[1], dtype=probs.dtype, device=probs.device)
        return [(probs[:, a:a + 1].sqrt() * (eye[a] - probs)).to(outputs.dtype) for a in range(probs.shape[1])]
    raise ValueError(f"Unknown Fisher estimator {estimator!r}: use one of {ESTIMATORS}.")


def estimate_fisher(model: nn.Module, states: torch.Tensor, estimator: str = "expected",
                    per_sample_loss: PerSampleLoss | None = None, batch_size: int = 32,
                    generator: torch.Generator | None = None,
                    poll: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of `model` at its current parameters, averaged over `states`.

    `states` may live on the CPU; minibatches of `batch_size` move to the model's device.
    For `empirical`, `per_sample_loss(outputs, rows)` returns one loss per row of the
    minibatch `states[rows]`; each loss may depend on its own row of outputs only.
    `poll()` is called before every minibatch; it may raise to abandon the estimate
    (a stop signal). Returns {parameter name: tensor shaped like the parameter}.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown Fisher estimator {estimator!r}: use one of {ESTIMATORS}.")
    if len(states) == 0:
        raise ValueError("The Fisher needs at least one state.")
    layers = _layers(model)
    device = next(model.parameters()).device
    fisher = {name: torch.zeros_like(p) for name, p in shared_parameters(model).items()}
    records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def record(module, args, output):
            records[name] = (args[0].detach(), output)
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers]
    try:
        for start in range(0, len(states), batch_size):
            if poll is not None:
                poll()
            rows = slice(start, min(start + batch_size, len(states)))
            records.clear()
            with torch.enable_grad():
                outputs = model(states[rows].to(device))
            layer_outputs = [records[name][1] for name, _ in layers]
            # One backward pass per cotangent gives every layer's output gradients (cheap); the
            # per-sample products are then done once per layer for all cotangents together.
            per_cotangent = [torch.autograd.grad(outputs, layer_outputs, grad_outputs=cotangent, retain_graph=True)
                             for cotangent in _cotangents(outputs, estimator, per_sample_loss, rows, generator)]
            for index, (name, module) in enumerate(layers):
                grad_out = torch.stack([grads[index] for grads in per_cotangent])
                for param_name, value in _squared_grads(module, records[name][0], grad_out).items():
                    fisher[f"{name}.{param_name}" if name else param_name] += value
    finally:
        for handle in handles:
            handle.remove()
        records.clear()
    return {name: value / len(states) for name, value in fisher.items()}
