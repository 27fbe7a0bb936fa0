"""Activation memory and recomputation per training pair at LLaVA-OneVision-0.5B dimensions, measured on a CPU.

    python benchmarks/bench_activation_memory.py [--budgets 1.0 0.5 0.3 0.1] [--batch-sizes 16 24 32] [--json out.json]

One real LEVIR-CC pair goes through a random-weight 0.5B model in bf16 (the dtype DeepSpeed trains in), in training
mode, as training runs it (LM head on the caption window only, no KV cache). A saved-tensor hook records every tensor autograd
keeps for the backward pass (each storage once, parameters excluded), attributed to the transformer layer running
when it was saved, or to "outside" (embeddings, projector, LM head, loss). Then the first layer of each kind (SigLIP
encoder layer, difference block, Qwen2 decoder layer) is run again on the inputs it received, alone:
- eager: what it saves; a checkpointed layer keeps only its input activations, and recomputes its whole forward;
- compiled as `--compile_layers` compiles it (inductor), under each `--activation_memory_budget` of `--budgets`:
  what it saves, and the FLOPs of its compiled forward and backward graphs (matrix products and attention, counted
  from the graphs' shapes); recomputation = backward FLOPs minus those at budget 1.0.
The compiler's choice of what to recompute estimates cost by FLOPs, so it is the same on a GPU.

Peak GPU memory per device is then predicted as ZeRO-2 bf16 states (bf16 weights and gradients, fp32 master weights,
gradients and Adam moments: 20 bytes per parameter) + batch x activations per pair (+ one checkpointed layer's
recomputation). Compare a prediction with `bench_train.py mfu`'s measured `peak_memory_gb` before trusting it.
"""

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch._functorch.config
import torch._inductor.config
from torch._inductor.compile_fx import compile_fx, compile_fx_inner
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry
from transformers.modeling_layers import GradientCheckpointingLayer

from bench_train import REPO_ROOT, build_levir_sample, random_0_5b_model
from rscc.training import ChangeCaptionCollator, EpochCaptionDataset, load_split

ZERO2_BF16_BYTES_PER_PARAMETER = 2 + 2 + 4 + 4 + 8
MB, GB = 2**20, 2**30
# The CPU's fused attention kernels take the arguments of the CUDA flash-attention ones that FLOP formulas exist for.
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: torch.ops.aten._scaled_dot_product_flash_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        torch.ops.aten._scaled_dot_product_flash_attention_backward,
}


def storage_key(tensor: torch.Tensor) -> tuple:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


class SavedTensorLedger:
    """Bytes autograd saves for the backward pass, per layer of `model` and outside its layers (parameters excluded,
    each storage once). Use as a context manager around the forward pass."""

    def __init__(self, model: torch.nn.Module):
        self.parameters = {storage_key(parameter) for parameter in model.parameters()}
        self.layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
        self.saved = [0] * len(self.layers)
        self.outside = 0
        self.seen: set = set()
        self.current = None
        self.handles = []
        for index, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_pre_hook(lambda *_, index=index: setattr(self, "current", index)))
            self.handles.append(layer.register_forward_hook(lambda *_: setattr(self, "current", None)))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        if key not in self.parameters and key not in self.seen:
            self.seen.add(key)
            if self.current is None:
                self.outside += key[1]
            else:
                self.saved[self.current] += key[1]
        return tensor

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()

    @property
    def total(self) -> int:
        return self.outside + sum(self.saved)


def graph_flops(graph_module: torch.fx.GraphModule) -> int:
    """FLOPs of the matrix products and attention of an FX graph, from the shapes its nodes carry."""
    total = 0
    for node in graph_module.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        packet = CPU_ATTENTION.get(packet, packet)
        if node.op != "call_function" or packet not in flop_registry:
            continue
        values = tree_map(lambda value: value.meta["val"] if isinstance(value, torch.fx.Node) else value,
                          (node.args, node.kwargs))
        total += flop_registry[packet](*values[0], **values[1], out_val=node.meta["val"])
    return total


def counting_inductor(flops: dict):
    """torch.compile's inductor backend, adding up the FLOPs of the forward and backward graphs it compiles."""

    def inner_compile(graph_module, example_inputs, **kwargs):
        flops["backward" if kwargs.get("is_backward") else "forward"] += graph_flops(graph_module)
        return compile_fx_inner(graph_module, example_inputs, **kwargs)

    return lambda graph_module, example_inputs: compile_fx(graph_module, example_inputs, inner_compile=inner_compile)


def fresh_inputs(inputs, copy_values: bool = False):
    """A layer's inputs as new leaves, requiring gradients where they did (copied, to keep them as they were)."""

    def leaf(value):
        if not isinstance(value, torch.Tensor):
            return value
        detached = value.detach().clone() if copy_values else value.detach()
        return detached.requires_grad_(value.requires_grad)

    return tree_map(leaf, inputs)


def run_layer(layer: torch.nn.Module, captured) -> int:
    """Forward and backward of `layer` on its captured inputs; returns the bytes saved for the backward."""
    args, kwargs = fresh_inputs(captured)
    with SavedTensorLedger(layer) as ledger:
        output = layer(*args, **kwargs)
    outputs = [value for value in torch.utils._pytree.tree_leaves(output) if isinstance(value, torch.Tensor)]
    sum(value.float().sum() for value in outputs if value.requires_grad).backward()
    return ledger.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if 1.0 not in args.budgets:
        args.budgets.insert(0, 1.0)  # the reference for recomputation

    model, processor = random_0_5b_model()
    model = model.to(torch.bfloat16).train()
    with tempfile.TemporaryDirectory() as work:
        dataset = build_levir_sample(args.data, Path(work))
        view = EpochCaptionDataset(load_split(str(dataset), "train"), "flatten", seed=0)
        batch = ChangeCaptionCollator(processor)([view[0]])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)

    # The whole model once: what is saved outside the layers, and the inputs of the first layer of each kind.
    captured: dict[str, tuple] = {}
    first_layers: dict[str, torch.nn.Module] = {}

    def capture(layer, layer_args, layer_kwargs):
        kind = type(layer).__name__
        if kind not in captured:
            captured[kind] = fresh_inputs((layer_args, layer_kwargs), copy_values=True)
            first_layers[kind] = layer

    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    handles = [layer.register_forward_pre_hook(capture, with_kwargs=True) for layer in layers]
    with SavedTensorLedger(model) as ledger:
        loss = model(**batch, labelled_logits_only=True, use_cache=False).loss
    del loss
    for handle in handles:
        handle.remove()
    counts = {kind: sum(type(layer).__name__ == kind for layer in layers) for kind in captured}

    kinds = {}
    for kind, captured_inputs in captured.items():
        layer = first_layers[kind]
        # A checkpointed layer keeps its inputs; only the activations among them are its own (position tables and
        # masks are shared by all layers).
        inputs = {storage_key(value) for value in torch.utils._pytree.tree_leaves(captured_inputs)
                  if isinstance(value, torch.Tensor) and value.requires_grad}
        figures = {
            "count": counts[kind],
            "eager_saved_mb": round(run_layer(layer, captured_inputs) / MB, 2),
            "checkpointed_saved_mb": round(sum(nbytes for _, nbytes in inputs) / MB, 2),
            "compiled": {},
        }
        for budget in args.budgets:
            torch._dynamo.reset()
            flops = {"forward": 0, "backward": 0}
            compiled = copy.deepcopy(layer)
            # Compiled anew: a cached graph would skip the compiler, and with it the FLOP count.
            with torch._functorch.config.patch(activation_memory_budget=budget, enable_autograd_cache=False), \
                    torch._inductor.config.patch(fx_graph_cache=False):
                compiled.compile(backend=counting_inductor(flops))
                saved = run_layer(compiled, captured_inputs)
            print(f"{kind}, budget {budget}: {saved / MB:.1f} MB saved, {flops}", file=sys.stderr)
            figures["compiled"][budget] = {
                "saved_mb": round(saved / MB, 2),
                "forward_gflop": round(flops["forward"] / 1e9, 2),
                "backward_gflop": round(flops["backward"] / 1e9, 2),
            }
        reference = figures["compiled"][1.0]["backward_gflop"]
        for entry in figures["compiled"].values():
            entry["recomputed_gflop"] = round(entry["backward_gflop"] - reference, 2)
        figures["forward_gflop"] = figures["compiled"][1.0]["forward_gflop"]
        kinds[kind] = figures

    parameters = sum(parameter.numel() for parameter in model.parameters())
    states_gb = parameters * ZERO2_BF16_BYTES_PER_PARAMETER / GB
    layer_gflop = sum(f["count"] * (f["forward_gflop"] + f["compiled"][1.0]["backward_gflop"]) for f in kinds.values())

    def configuration(name, saved_mb, recomputed_gflop, transient_mb=0.0):
        per_pair_gb = (ledger.outside / MB + transient_mb + sum(f["count"] * saved_mb(f) for f in kinds.values())) / 1024
        recomputed = sum(f["count"] * recomputed_gflop(f) for f in kinds.values())
        return {
            "configuration": name,
            "activations_gb_per_pair": round(per_pair_gb, 3),
            "recomputed_share_of_layer_flops": round(recomputed / layer_gflop, 4),
            "predicted_peak_gb": {size: round(states_gb + size * per_pair_gb, 1) for size in args.batch_sizes},
        }

    largest_layer_mb = max(f["eager_saved_mb"] for f in kinds.values())
    predictions = [
        configuration("activation_checkpointing (every layer)", lambda f: f["checkpointed_saved_mb"],
                      lambda f: f["forward_gflop"], transient_mb=largest_layer_mb),
        configuration("no checkpointing, eager", lambda f: f["eager_saved_mb"], lambda f: 0.0),
    ]
    for budget in args.budgets:
        predictions.append(configuration(
            f"compile_layers, activation_memory_budget {budget}",
            lambda f, budget=budget: f["compiled"][budget]["saved_mb"],
            lambda f, budget=budget: f["compiled"][budget]["recomputed_gflop"],
        ))
    report = {
        "sequence_length": batch["input_ids"].shape[1],
        "parameters": parameters,
        "zero2_bf16_states_gb": round(states_gb, 2),
        "whole_model_eager_saved_gb_per_pair": round(ledger.total / GB, 3),
        "outside_layers_saved_mb_per_pair": round(ledger.outside / MB, 1),
        "layer_gflop_per_pair": round(layer_gflop, 1),
        "layers": kinds,
        "predictions": predictions,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
