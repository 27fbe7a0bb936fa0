"""Where the time of one training step goes, outside the Trainer: a companion to `bench_train.py mfu`.

    python benchmarks/profile_train_step.py [--dims 0.5b] [--batch-size 8] [--work DIR] [--trace-out table.txt]

Builds (or reuses, with `--work`) the random-weight checkpoint of `bench_train.py`, then on one device times in bf16
(fp32 on a CPU): the data loader alone, forward + backward with and without gradient checkpointing, the forward of
each part (vision tower, difference module, language model, LM head), and an AdamW step; with `--compile`, also
forward + backward with each transformer layer compiled (`torch.compile`, one graph per layer); and writes the
profiler's table of the most expensive operators of one forward + backward pass.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_train import REPO_ROOT, build_levir_sample, build_random_checkpoint, synchronize
from rscc import RsccForConditionalGeneration, RsccProcessor
from rscc.training import ChangeCaptionCollator, EpochCaptionDataset, compile_layers, load_split


def median_seconds(function, repeats=5, warmups=2) -> float:
    for _ in range(warmups):
        function()
    durations = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def part_forward_seconds(model, batch) -> dict:
    """Forward time of each part, from hooks around its modules (device synchronised at every boundary)."""
    parts = {
        "vision_tower": model.model.vision_tower,
        "language_model": model.model.language_model,
        "lm_head": model.lm_head,
    }
    if model.model.difference_module is not None:
        parts["difference_module"] = model.model.difference_module
    totals = dict.fromkeys(parts, 0.0)
    handles = []
    for name, module in parts.items():
        starts = []

        def before(module, args, starts=starts):
            synchronize()
            starts.append(time.perf_counter())

        def after(module, args, output, name=name, starts=starts):
            synchronize()
            totals[name] += time.perf_counter() - starts.pop()

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    with torch.no_grad():
        model(**batch)
        totals = dict.fromkeys(parts, 0.0)
        synchronize()
        start = time.perf_counter()
        model(**batch)
        synchronize()
        totals["whole_forward"] = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--dims", choices=["0.5b", "tiny"], default="0.5b")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dataloader-workers", type=int, default=6)
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument("--compile", action="store_true", help="also time with every transformer layer compiled")
    parser.add_argument("--work", type=Path, help="reuse the model and dataset built here by an earlier run")
    parser.add_argument("--trace-out", type=Path, help="write the profiler's operator table here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        dataset = build_levir_sample(args.data, work)
        folder = build_random_checkpoint(args.dims, work / f"model_{args.dims}")
        processor = RsccProcessor.from_pretrained(folder)
        view = EpochCaptionDataset(load_split(str(dataset), "train"), "flatten", seed=0)
        collator = ChangeCaptionCollator(processor)
        figures = {}

        loader = torch.utils.data.DataLoader(
            [view[index % len(view)] for index in range(args.batch_size * 12)], batch_size=args.batch_size,
            num_workers=args.dataloader_workers, collate_fn=collator,
        )
        start = time.perf_counter()
        batches = list(loader)
        figures["dataloader_samples_per_s"] = args.batch_size * len(batches) / (time.perf_counter() - start)

        model = RsccForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, attn_implementation=args.attn_implementation
        ).to(device).train()
        batch = {key: value.to(device) for key, value in batches[0].items()}
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        figures["sequence_length"] = batch["input_ids"].shape[1]
        figures["pixel_values_shape"] = tuple(batch["pixel_values"].shape)

        def forward_backward(labelled_logits_only=True):
            model(**batch, labelled_logits_only=labelled_logits_only, use_cache=False).loss.backward()

        figures["forward_backward_all_logits_s"] = median_seconds(lambda: forward_backward(False))
        figures["forward_backward_s"] = median_seconds(forward_backward)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        figures["forward_backward_checkpointed_s"] = median_seconds(forward_backward)
        if args.compile:
            compile_layers(model)
            figures["forward_backward_checkpointed_compiled_s"] = median_seconds(forward_backward, warmups=3)
            model.activation_checkpointing_disable()
            figures["forward_backward_compiled_s"] = median_seconds(forward_backward, warmups=3)
        model.activation_checkpointing_disable()
        figures.update({f"forward_{name}_s": value for name, value in part_forward_seconds(model, batch).items()})

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
        figures["adamw_step_s"] = median_seconds(optimizer.step)

        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            forward_backward()
            synchronize()
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=70)
        if args.trace_out:
            args.trace_out.write_text(table)

    for name, value in figures.items():
        print(f"{name:40s} {value:.4g}" if isinstance(value, float) else f"{name:40s} {value}")
    print(table[:6000])


if __name__ == "__main__":
    main()
