"""Training throughput and memory of `rscc.training.run_stage` on the real LEVIR-CC pairs of ../shared/data.

Two modes:

    python benchmarks/bench_train.py tiny [--stage stage2] [--steps 12] [--batch-size 2] [--json out.json]

        The tiny random model on the CPU (fp32, no DeepSpeed): training samples/s over the steps after the first
        two, and the process's peak resident memory (RSS).

    accelerate launch --config_file train/accelerate/single_gpu.yaml benchmarks/bench_train.py mfu \
        [--dims 0.5b] [--stage stage2] [--steps 30] [--batch-size 32] [--compile-layers] \
        [--checkpoint-every N | --activation-memory-budget B] [--json out.json]

        A model at LLaVA-OneVision-0.5B dimensions (SigLIP-so400m-384 + Qwen2-0.5B + the difference module, vocabulary
        152,000) with random weights, trained as the CCExpert recipe does: bf16, ZeRO-2 (train/deepspeed/zero2.json),
        gradient checkpointing (every layer by default); 32 pairs per device is CCExpert's global batch of 256 over
        8 GPUs. Model FLOPs per sample are counted with torch's FlopCounterMode on a forward and backward pass of the
        training batch as training runs it (LM head on the caption window only, see `labelled_logits_only`) but
        without checkpointing (the recomputation is not model work); the peak is a measured bf16 matmul rate on the
        same GPU, and MFU = FLOPs/sample x samples/s / peak. `--dims tiny --precision fp32` runs the same path on a CPU in seconds (a
        check that it runs; its MFU means nothing). `--profile-out` writes torch.profiler tables of one step.

Both modes train on the 3 real pairs of ../shared/data repeated under new ids (every batch full) and print JSON.
Figures measured with it are in the README's training section.
"""

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainerCallback

from rscc import RsccForConditionalGeneration, RsccProcessor
from rscc.tiny_checkpoints import llava_onevision_0_5b_config, make_processor, make_tiny_checkpoint
from rscc.data import build_dataset, levir_cc_records
from rscc.training import ChangeCaptionCollator, EpochCaptionDataset, load_split, parse_arguments, run_stage

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_PAIRS = ("train_000016.png", "train_000051.png", "train_000054.png")
COPIES = 64


def build_levir_sample(data: Path, folder: Path) -> Path:
    """The 3 real LEVIR-CC pairs (5 captions each), each 64 times, as a dataset in rscc's format (reused if `folder`
    holds it)."""
    if (folder / "dataset" / "README.md").exists():
        return folder / "dataset"
    root = folder / "levir_root"
    for side in ("A", "B"):
        (root / "images" / "train" / side).mkdir(parents=True)
        for name in REAL_PAIRS:
            shutil.copy(data / "levir_cc" / "images" / "train" / side / name, root / "images" / "train" / side / name)
    entries = json.loads((data / "levir_cc" / "LevirCCcaptions.json").read_text())["images"]
    (root / "LevirCCcaptions.json").write_text(
        json.dumps({"images": [entry for entry in entries if entry["filename"] in REAL_PAIRS]})
    )
    records = list(levir_cc_records(root))
    # Each pair repeated under new ids, so that every batch is full at any batch size (3 pairs make 15 samples).
    copies = [dataclasses.replace(record, id=f"{record.id}_copy{copy}") for copy in range(COPIES) for record in records]
    return build_dataset(copies, folder / "dataset").out_dir


def synchronize() -> None:
    """Wait for the GPU's queued work, so that host clocks time finished work (nothing to wait for on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (the device synchronised at each end, so times are not queued work)."""

    def __init__(self):
        self.durations, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.durations.append(time.perf_counter() - self._start)


class StepProfiler(TrainerCallback):
    """Profiles one optimizer step with torch.profiler and writes its operator tables (by device and host time)."""

    def __init__(self, step: int, output: Path):
        self.step, self.output, self._profiler = step, output, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities)
            self._profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._profiler is not None:
            synchronize()
            self._profiler.__exit__(None, None, None)
            averages = self._profiler.key_averages()
            tables = [averages.table(sort_by=key, row_limit=30, max_name_column_width=80)
                      for key in ("self_cuda_time_total", "self_cpu_time_total", "cpu_time_total")]
            self.output.write_text("\n\n".join(tables))
            self._profiler = None


def train_and_time(model_folder, dataset, output, stage, steps, batch_size, workers, extra, profile=None) -> tuple:
    timer = StepTimer()
    options = ["--model_name_or_path", str(model_folder), "--dataset_name_or_path", str(dataset),
               "--output_dir", str(output), "--max_steps", str(steps), "--per_device_train_batch_size", str(batch_size),
               "--learning_rate", "1e-5", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true",
               "--dataloader_num_workers", str(workers), "--dataloader_drop_last", "true", *extra]
    callbacks = [timer] if profile is None else [timer, profile]
    trainer = run_stage(parse_arguments(stage, options), callbacks=callbacks)
    measured = timer.durations[2:]  # the first steps build caches, allocators and DeepSpeed buckets
    world = trainer.accelerator.num_processes
    return trainer, {
        "steps_timed": len(measured),
        "median_step_s": statistics.median(measured),
        "samples_per_second": batch_size * world / statistics.median(measured),
        "world_size": world,
    }


def run_tiny(args, work: Path) -> dict:
    checkpoint = make_tiny_checkpoint(work / "tiny")
    dataset = build_levir_sample(args.data, work)
    _, figures = train_and_time(
        checkpoint, dataset, work / "out", args.stage, args.steps, args.batch_size, args.dataloader_workers, []
    )
    figures.update(
        mode="tiny", stage=args.stage, batch_size=args.batch_size, device="cpu", precision="fp32",
        threads=torch.get_num_threads(),
        # ru_maxrss is in KiB on Linux: the peak of the whole process (model, optimizer, data, Python).
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return figures


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate (FLOP/s) of this device: the denominator of MFU."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 50 if device.type == "cuda" else 5
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


PER_IMAGE_INPUTS = ("pixel_values", "image_sizes")  # two rows per sample (before, after); the rest have one


def count_training_flops(model, batch, device, dtype, samples_per_pass: int = 2) -> float:
    """FLOPs of one training forward + backward pass over `batch` (no activation recomputation), per sample.

    Counted `samples_per_pass` samples at a time (each keeps the batch's padded length), so that the count, which
    runs without gradient checkpointing, fits in memory at any batch size.
    """
    model = model.to(device).train()
    num_samples = batch["input_ids"].shape[0]
    total = 0
    for start in range(0, num_samples, samples_per_pass):
        chunk = {}
        for key, value in batch.items():
            rows = 2 if key in PER_IMAGE_INPUTS else 1
            chunk[key] = value[rows * start : rows * (start + samples_per_pass)].to(device)
        chunk["pixel_values"] = chunk["pixel_values"].to(dtype)
        counter = FlopCounterMode(display=False)  # counts restart at every entry
        with counter, torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(**chunk, labelled_logits_only=True, use_cache=False).loss.backward()
        total += counter.get_total_flops()
        model.zero_grad(set_to_none=True)
    return total / num_samples


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def random_0_5b_model() -> tuple[RsccForConditionalGeneration, RsccProcessor]:
    """A random-weight rscc model at LLaVA-OneVision-0.5B dimensions (fp32, seeded) and its processor."""
    processor = make_processor(image_size=384, patch_size=14)
    tokenizer = processor.tokenizer
    torch.manual_seed(0)
    model = RsccForConditionalGeneration(llava_onevision_0_5b_config(
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
    ))
    return model, processor


def build_random_checkpoint(dims: str, folder: Path) -> Path:
    """A random-weight checkpoint of the given dimensions in `folder` (kept if an earlier run built it there)."""
    if (folder / "config.json").exists():
        return folder
    if dims == "tiny":
        return make_tiny_checkpoint(folder)
    model, processor = random_0_5b_model()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run_mfu(args, work: Path) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    dataset = build_levir_sample(args.data, work)
    folder = build_random_checkpoint(args.dims, work / f"model_{args.dims}")
    model = RsccForConditionalGeneration.from_pretrained(folder)
    processor = RsccProcessor.from_pretrained(folder)
    view = EpochCaptionDataset(load_split(str(dataset), "train"), "flatten", seed=0)
    batch = ChangeCaptionCollator(processor)([view[index % len(view)] for index in range(args.batch_size)])
    flops_per_sample = count_training_flops(model, batch, device, dtype)
    parameters = sum(p.numel() for p in model.parameters())
    sequence_length = batch["input_ids"].shape[1]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    peak = matmul_peak_flops(device, dtype)

    extra = ["--compile_layers", str(args.compile_layers).lower()]
    if args.activation_memory_budget is not None:
        extra += ["--activation_memory_budget", str(args.activation_memory_budget)]
    elif args.checkpoint_every > 0:
        extra += ["--activation_checkpointing", "true",
                  "--activation_checkpointing_kwargs", json.dumps({"every_n_layers": args.checkpoint_every})]
    if str(args.deepspeed) != "none":
        extra += ["--deepspeed", str(args.deepspeed)]
    if dtype == torch.bfloat16:
        extra += ["--bf16", "true"]
    profile = StepProfiler(args.profile_step, Path(args.profile_out)) if args.profile_out else None
    trainer, figures = train_and_time(
        folder, dataset, work / "out", args.stage, args.steps, args.batch_size, args.dataloader_workers, extra, profile
    )
    achieved = flops_per_sample * figures["samples_per_second"] / figures["world_size"]
    figures.update(
        mode="mfu", dims=args.dims, stage=args.stage, batch_size_per_device=args.batch_size,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", precision=args.precision,
        deepspeed=str(args.deepspeed), compile_layers=args.compile_layers,
        activation_memory_budget=args.activation_memory_budget,
        checkpoint_every_n_layers=None if args.activation_memory_budget is not None else args.checkpoint_every,
        parameters=parameters,
        sequence_length=sequence_length, model_tflops_per_sample=significant(flops_per_sample / 1e12),
        # Cross-check of the count: 6 x parameters x positions (dense layers only, no attention scores).
        six_n_tokens_tflops_per_sample=significant(6 * parameters * sequence_length / 1e12),
        measured_matmul_peak_tflops=significant(peak / 1e12),
        achieved_tflops_per_device=significant(achieved / 1e12),
        mfu=significant(achieved / peak),
        peak_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["tiny", "mfu"])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--stage", default="stage2", choices=["stage1", "stage2", "stage3"])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 12 tiny, 30 mfu)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per device (default: 2 tiny, 32 mfu)")
    parser.add_argument("--dims", choices=["0.5b", "tiny"], default="0.5b", help="mfu mode: model dimensions")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="mfu mode")
    parser.add_argument("--deepspeed", default=str(REPO_ROOT / "train" / "deepspeed" / "zero2.json"),
                        help="mfu mode: DeepSpeed config file, or 'none' for the plain Trainer (run without accelerate)")
    parser.add_argument("--compile-layers", action="store_true", help="mfu mode: train with --compile_layers")
    parser.add_argument("--checkpoint-every", type=int, default=1,
                        help="mfu mode: gradient-checkpoint every Nth transformer layer (0: none)")
    parser.add_argument("--activation-memory-budget", type=float,
                        help="mfu mode, with --compile-layers: train with --activation_memory_budget instead of "
                        "gradient checkpointing")
    parser.add_argument("--profile-out", help="mfu mode: write torch.profiler tables of one training step here")
    parser.add_argument("--profile-step", type=int, default=8, help="the step --profile-out profiles")
    parser.add_argument("--threads", type=int, help="torch CPU threads (the tiny model runs fastest on 1)")
    parser.add_argument("--dataloader-workers", type=int, default=2, help="data-loading processes per device")
    parser.add_argument("--work", type=Path, help="keep the built model and dataset here and reuse them (default: a "
                        "temporary folder)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    args.steps = args.steps or (12 if args.mode == "tiny" else 30)
    args.batch_size = args.batch_size or (2 if args.mode == "tiny" else 32)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work / "out", ignore_errors=True)
        figures = (run_tiny if args.mode == "tiny" else run_mfu)(args, work)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(figures, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
