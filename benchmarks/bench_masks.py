"""Change-mask token filter: visual tokens, language-model sequence length and generate speed, rscc versus stock.

    python benchmarks/bench_masks.py [--size tiny|real|both] [--real-pairs 4] [--json out.json]

Inputs: the real LEVIR-CD pairs that have a label (`../shared/data/levir_cd_samples`), each twice: once with its real
mask and once with an empty one, since LEVIR-CC is half no-change. Every model runs the same pairs through the shared
inference path (`rscc.inference.caption_pairs`), greedy, a fixed number of new tokens. The language-model sequence
length is recorded by a hook on the language model at each prefill, so it is what the model really computed; visual
tokens are that length minus the pair's text tokens.

Sizes (random weights, CPU fp32):
- `tiny`: the tiny checkpoint's widths (vision 32, text 32) but LLaVA-OneVision's 384 px input with 14 px patches, so
  the token grid is the real 27 x 27 and the token counts are those of the real model; all pairs, batches of 8.
- `real`: LLaVA-OneVision-0.5B dimensions (SigLIP-so400m + Qwen2-0.5B, about 0.9B parameters); `--real-pairs` pairs
  (half real masks, half empty), one at a time, since a stock pair takes about 17 s on 2 cores.

Models: stock LLaVA-OneVision; rscc with difference integration and change_filter none / multiply / drop (masks given
as input); rscc with drop but without difference integration (the filter alone). All hold the same base weights.

`difference_module` gives the FLOPs the difference module executes per pair of the mix (torch's FLOP counter, one pair
at a time): dense (no filter: every token of every pair) and under `drop` (the kept tokens of changed pairs only;
unchanged pairs skip the module).
"""

import argparse
import copy
import json
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from rscc import RsccConfig, RsccForConditionalGeneration
from rscc.checkpoints import llava_onevision_0_5b_config, make_processor, tiny_config
from rscc.inference import caption_pairs
from rscc.modeling_rscc import NEW_MODULE_PREFIXES, change_masks_to_tokens, context_token_mask

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "levir_cd_samples"
RSCC_MODES = ("none", "multiply", "drop")


def levir_cd_mix() -> tuple[list, list]:
    """Each labelled LEVIR-CD pair with its real mask, then the same pairs with an empty mask."""
    names = sorted(path.name for path in (DATA / "label").iterdir())
    pairs = [[str(DATA / "A" / name), str(DATA / "B" / name)] for name in names]
    empty = np.zeros((256, 256), np.uint8)
    return pairs + pairs, [str(DATA / "label" / name) for name in names] + [empty] * len(names)


class PrefillRecorder:
    """Records, at each prefill of the language models it hooks, the real (non-padding) positions of each sample, under
    the name of the run in progress (`run_name`)."""

    def __init__(self, language_models):
        self.run_name = None
        self.real_positions = defaultdict(list)
        self.padded_lengths = defaultdict(list)
        distinct = {id(model): model for model in language_models}.values()
        self.handles = [model.register_forward_pre_hook(self, with_kwargs=True) for model in distinct]

    def __call__(self, module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        if embeds.shape[1] == 1:
            return  # a decoding step
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self.real_positions[self.run_name].extend(mask.sum(1).tolist())
        else:  # generate drops an all-ones mask
            self.real_positions[self.run_name].extend([embeds.shape[1]] * embeds.shape[0])
        self.padded_lengths[self.run_name].append(embeds.shape[1])


def text_tokens_per_pair(processor, pairs) -> list[int]:
    inputs = processor(images=pairs)
    return ((inputs["input_ids"] != processor.image_token_id) & inputs["attention_mask"].bool()).sum(1).tolist()


def measure(runs: dict, processor, pairs, masks, batch_size, new_tokens, repeats) -> dict:
    """Caption all pairs in every run of `runs` (`name: (model, change_filter)`, `None` for the stock model), batch by
    batch.

    The machine is shared, so its load drifts: the runs take turns on each batch (in rotating order) and each keeps
    its best time per batch over `repeats`, so no run is timed only in a busy stretch. Wall and CPU time are both
    kept; CPU time is steadier under contention.
    """
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, batch_size=batch_size)

    def caption(name, batch, **overrides):
        model, change_filter = runs[name]
        if change_filter is not None:
            model.config.change_filter = change_filter  # read at run time: one model serves several modes
        recorder.run_name = name
        mask_batch = None if change_filter is None else masks[batch]
        caption_pairs(model, processor, pairs[batch], change_masks=mask_batch, **{**options, **overrides})

    recorder = PrefillRecorder([model.model.language_model for model, _ in runs.values()])
    for name in runs:  # warm-up: first-call allocations are not the model's cost
        caption(name, slice(0, 1), max_new_tokens=1, min_new_tokens=1)
    recorder.real_positions.clear()
    recorder.padded_lengths.clear()
    batches = [slice(start, start + batch_size) for start in range(0, len(pairs), batch_size)]
    wall = {name: [math.inf] * len(batches) for name in runs}
    cpu = {name: [math.inf] * len(batches) for name in runs}
    names = list(runs)
    for repeat in range(repeats):
        for index, batch in enumerate(batches):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                caption(name, batch)
                wall[name][index] = min(wall[name][index], time.perf_counter() - wall_start)
                cpu[name][index] = min(cpu[name][index], time.process_time() - cpu_start)
    for handle in recorder.handles:
        handle.remove()
    text = text_tokens_per_pair(processor, pairs)
    half = len(pairs) // 2
    results = {}
    for name in runs:
        positions = recorder.real_positions[name][: len(pairs)]  # the first repeat; the others see the same lengths
        visual = [count - text_count for count, text_count in zip(positions, text)]
        results[name] = {
            "pairs_per_s": len(pairs) / sum(wall[name]),
            "pairs_per_cpu_s": len(pairs) / sum(cpu[name]),
            "lm_sequence_length": statistics.mean(positions),
            "lm_padded_length_per_batch": statistics.mean(recorder.padded_lengths[name][: len(batches)]),
            "visual_tokens_per_pair": statistics.mean(visual),
            "visual_tokens_changed_pairs": statistics.mean(visual[:half]),
            "visual_tokens_unchanged_pairs": statistics.mean(visual[half:]),
        }
    return results


def build_models(config: RsccConfig) -> tuple:
    """rscc (with difference integration), stock LLaVA-OneVision and rscc without the difference module, one set of
    base weights shared in memory."""
    rscc = RsccForConditionalGeneration(config).eval()
    base_weights = {
        name: tensor for name, tensor in rscc.state_dict().items() if not name.startswith(NEW_MODULE_PREFIXES)
    }
    rscc_options = {*RsccConfig.__dataclass_fields__} - {*LlavaOnevisionConfig.__dataclass_fields__}
    base_options = {k: v for k, v in config.to_dict().items() if k not in rscc_options | {"model_type"}}
    stock = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**base_options)).eval()
    stock.load_state_dict(base_weights, assign=True)
    stock.tie_weights()
    filter_config = copy.deepcopy(config)
    filter_config.use_difference_integration = False
    filter_config.change_filter = "drop"
    filter_only = RsccForConditionalGeneration(filter_config).eval()
    filter_only.load_state_dict(base_weights, assign=True)
    filter_only.tie_weights()
    return rscc, stock, filter_only


def difference_module_flops(model, processor, pairs, masks) -> dict:
    """FLOPs of the difference module per pair, dense and on the kept tokens of `drop` (input masks)."""
    from torch.utils.flop_counter import FlopCounterMode

    config = model.config
    module = model.model.difference_module
    grid = config.vision_grid_size
    width = config.vision_config.hidden_size
    levels = [torch.randn(1, grid * grid, width) for _ in config.difference_feature_layers]
    floor = context_token_mask(grid, config.change_filter_min_tokens)

    def count(token_mask) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(levels, levels, levels[-1], levels[-1], token_mask=token_mask)
        return counter.get_total_flops()

    dense = count(None)
    sparse, kept_counts = [], []
    for mask in processor(images=pairs, change_masks=masks)["change_masks"]:
        changed = change_masks_to_tokens(mask[None], grid)
        kept = changed | floor
        kept_counts.append(int(kept.sum()) if changed.any() else 0)
        sparse.append(count(kept) if changed.any() else 0.0)
    return {
        "dense_gflop_per_pair": dense / 1e9,
        "drop_gflop_per_pair": statistics.mean(sparse) / 1e9,
        "drop_refined_tokens_per_pair": statistics.mean(kept_counts),
        "flop_reduction": dense / statistics.mean(sparse),
    }


def benchmark(size: str, real_pairs: int) -> dict:
    pairs, masks = levir_cd_mix()
    processor = make_processor(image_size=384, patch_size=14)
    if size == "tiny":
        config = tiny_config(processor.tokenizer, image_size=384, patch_size=14)
        batch_size, new_tokens, repeats = 8, 8, 3
    else:
        config = llava_onevision_0_5b_config(
            image_token_index=processor.image_token_id,
            video_token_index=processor.tokenizer.convert_tokens_to_ids("<video>"),
        )
        half = real_pairs // 2
        pairs, masks = pairs[:half] + pairs[-half:], masks[:half] + masks[-half:]
        batch_size, new_tokens, repeats = 1, 4, 2
    torch.manual_seed(0)
    rscc, stock, filter_only = build_models(config)
    figures = {
        "size": size,
        "pairs": len(pairs),
        "grid": config.vision_grid_size,
        "change_filter_min_tokens": config.change_filter_min_tokens,
        "batch_size": batch_size,
        "new_tokens": new_tokens,
        "parameters": sum(p.numel() for p in rscc.parameters()),
    }
    runs = {"stock": (stock, None)}
    for mode in RSCC_MODES if size == "tiny" else ("none", "drop"):
        runs[f"rscc_{mode}"] = (rscc, mode)
    runs["rscc_drop_without_difference_module"] = (filter_only, "drop")
    figures["difference_module"] = difference_module_flops(rscc, processor, pairs, masks)
    figures["runs"] = measure(runs, processor, pairs, masks, batch_size, new_tokens, repeats)
    stock_run = figures["runs"]["stock"]
    for result in figures["runs"].values():
        reduction = stock_run["visual_tokens_per_pair"] / result["visual_tokens_per_pair"]
        result["visual_token_reduction_vs_stock"] = reduction
        result["speedup_vs_stock"] = result["pairs_per_s"] / stock_run["pairs_per_s"]
        result["cpu_speedup_vs_stock"] = result["pairs_per_cpu_s"] / stock_run["pairs_per_cpu_s"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "real", "both"], default="tiny")
    parser.add_argument("--real-pairs", type=int, default=4, help="pairs at real size (half with an empty mask)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    sizes = ["tiny", "real"] if args.size == "both" else [args.size]
    figures = {"threads": torch.get_num_threads()}
    for size in sizes:
        figures[size] = benchmark(size, args.real_pairs)
        print(json.dumps(figures[size], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
