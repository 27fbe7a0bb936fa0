"""Training memory: compiled layers with an activation-memory budget, and peak memory readings."""

from __future__ import annotations

import resource
from typing import Optional

import torch
import torch._functorch.config
from transformers.modeling_layers import GradientCheckpointingLayer



def checked_memory_budget(budget: float) -> float:
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"activation_memory_budget {budget}: expected a fraction in [0, 1]")
    return budget


def compile_layers(model: torch.nn.Module, activation_memory_budget: Optional[float] = None) -> int:
    """Compile every transformer layer of `model` in place (regional compilation: one graph per layer type, reused by
    all its layers, so compilation stays short and gradient checkpointing keeps working). Returns how many.

    Args:
        activation_memory_budget: Fraction (0 to 1) of a compiled layer's saved activations to keep; the compiler
            recomputes the rest in the backward pass, cheapest first (element-wise work before matrix products).
            A finer alternative to gradient checkpointing, which recomputes a checkpointed layer whole. It is
            PyTorch's process-wide `torch._functorch.config.activation_memory_budget`, read when a layer first
            compiles, so it applies to every compilation in the process. None leaves it as it is (1.0 by default).
    """
    if activation_memory_budget is not None:
        torch._functorch.config.activation_memory_budget = checked_memory_budget(activation_memory_budget)
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile()
    return len(layers)


def peak_memory_mb(device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size (RSS) on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
