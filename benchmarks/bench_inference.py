"""Inference cost of rscc against stock LLaVA-OneVision: one workload, every model side by side, one results table.

    python benchmarks/bench_inference.py --preset tiny|real|7b [--variants options|encodings] [--pairs N]
        [--batch-sizes 1 8] [--json out.json] [--readme benchmarks/README.md] [--device cpu|cuda]
        [--dtype float32|bfloat16]

Workload `levir-cd-mix`: the labelled LEVIR-CD pairs of `../shared/data/levir_cd_samples` with their real masks, then the
same pairs under empty masks (LEVIR-CC is half no-change); 12 new tokens (LEVIR-CC's mean caption length plus the end
token), greedy, through the shared inference path (`rscc.captioning.caption_samples`).

Presets (random weights): `tiny` (the tiny checkpoint's widths at LLaVA-OneVision's 384 px / 14 px, so token counts are
the real ones), `real` (LLaVA-OneVision-0.5B dimensions), `7b` (Qwen2-7B language model: memory planning only, built on
the meta device: parameters, weight bytes and KV cache per pair at the sequence lengths the tiny preset measures).

Variants `options` (the default), all holding the same base weights: stock; rscc with every option off; the difference
module alone; + `drop` with the workload's masks as input; full rscc (difference module + change head + `drop` with
`change_mask_source="predicted"`: the head runs on every pair, and the workload's masks are given, which win over its prediction, since
random weights predict noise); + the no-change shortcut (pairs whose predicted mask is empty skip the language model;
with random weights the head rarely predicts an empty mask, so this row shows the shortcut's overhead, not its gain);
KCFI's configuration (key change features alone reach the language model, with the change head); Semantic-CC's four
bi-temporal filters inside the vision tower (no other rscc module). `--models` measures a subset of these (stock always
included); `--section` names the README markers it writes between.
Variants `encodings` (`pair_encoding`): stock; `"llava_video"` (the pair as LLaVA-OneVision's 2-frame video, no new
weights); `"video_encoder"` (MV-CC: a VideoMAE-base-sized encoder over 2 frames of 224 px with tubelets of 2, its own
projector; the `tiny` preset uses a tiny one); that plus the workload's masks multiplying (MV-CC) or dropping tokens;
and a V-JEPA 2 ViT-L-sized encoder (2 frames of 256 px, tubelets of 2) in its place.
Each variant captions through a processor of its encoding. Its table goes between the `PRESET-encodings` markers.

Figures per model: pairs/s at each batch size (runs alternate, best of `--repeats` per batch, ratios to stock from the
same process), latency per pair at batch 1, the language model's sequence length and visual tokens per pair (recorded
at each prefill), FLOPs executed per pair by part (torch's FLOP counter: vision tower, projector, difference module,
change head, language-model prefill and decode, LM head), and achieved FLOP/s against the machine's measured matmul
rate. The Markdown table is printed last and, with `--readme`, written between that preset's results markers
(`<!-- results:PRESET:start -->`, `<!-- results:PRESET:end -->`) of that file.
"""

import argparse
import json
import math
import platform
import resource
import statistics
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from rscc import RsccConfig, RsccForConditionalGeneration, RsccImageProcessor, RsccProcessor
from rscc.tiny_checkpoints import llava_onevision_0_5b_config, make_processor, tiny_config
from rscc.captioning import caption_samples
from rscc.video_rscc import RsccVideoEncoder, processor_options

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "levir_cd_samples"
NEW_TOKENS = 12
# Model name -> rscc options (None: stock LLaVA-OneVision) and whether the workload's masks are passed.
MODELS = {
    "stock": (None, False),
    "rscc, options off": ({"change_features": "none"}, False),
    "difference module": ({}, False),
    "difference + drop (input masks)": ({"change_filter": "drop"}, True),
    "full (difference + head + drop, predicted)": (
        {"use_change_head": True, "change_filter": "drop", "change_mask_source": "predicted"},
        True,
    ),
    "full + no-change shortcut": (
        {"use_change_head": True, "change_filter": "drop", "change_mask_source": "predicted", "no_change_shortcut": True},
        True,
    ),
    "KCFI (key change tokens only + head)": (
        {"change_features": "key_change", "visual_tokens": "change", "use_change_head": True},
        False,
    ),
    "Semantic-CC filters (4 BCSF in the tower)": (
        {"change_features": "none", "bitemporal_filters": 4},
        False,
    ),
}
# `video_encoder_config` names a family of VIDEO_ENCODERS here; each preset gives it its size.
VIDEO_ENCODING = {"pair_encoding": "video_encoder", "change_features": "none"}
ENCODING_MODELS = {
    "stock": (None, False),
    "llava_video": ({"pair_encoding": "llava_video", "change_features": "none"}, False),
    "video_encoder": ({**VIDEO_ENCODING, "video_encoder_config": "videomae"}, False),
    "video_encoder + multiply (input masks, MV-CC)": (
        {**VIDEO_ENCODING, "video_encoder_config": "videomae", "change_filter": "multiply"},
        True,
    ),
    "video_encoder + drop (input masks)": (
        {**VIDEO_ENCODING, "video_encoder_config": "videomae", "change_filter": "drop"},
        True,
    ),
    "video_encoder (V-JEPA 2)": ({**VIDEO_ENCODING, "video_encoder_config": "vjepa2"}, False),
}
VARIANTS = {"options": MODELS, "encodings": ENCODING_MODELS}
# VideoMAE-base (MCG-NJU/videomae-base) over a pair: 2 frames of 224 px, 16 px patches, tubelets of 2: 196 tokens.
VIDEOMAE_BASE = dict(
    model_type="videomae", hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    image_size=224, patch_size=16, num_frames=2, tubelet_size=2,
)
# V-JEPA 2 ViT-L (facebook/vjepa2-vitl-fpc64-256) over a pair: 2 frames of 256 px, 16 px patches, tubelets of 2: 256
# tokens (its predictor, used in pretraining only, is not built).
VJEPA2_VITL = dict(
    model_type="vjepa2", hidden_size=1024, mlp_ratio=4.0, num_hidden_layers=24, num_attention_heads=16,
    crop_size=256, patch_size=16, frames_per_clip=2, tubelet_size=2,
)
VIDEO_ENCODERS = {
    "tiny": {
        "videomae": {**VIDEOMAE_BASE, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4},
        "vjepa2": {**VJEPA2_VITL, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
    },
    "real": {"videomae": VIDEOMAE_BASE, "vjepa2": VJEPA2_VITL},
}
# Parts whose FLOPs are counted, as submodule paths; under `pair_encoding="video_encoder"` the video encoder's backbone
# and projector stand where the vision tower and projector were.
PARTS = ("model.vision_tower", "model.video_encoder.backbone", "model.multi_modal_projector",
         "model.video_encoder.projector", "model.change_projector", "model.difference_module",
         "model.key_change_perceiver", "model.change_head", "model.language_model", "lm_head")
# Table columns: FLOPs of these parts (the last name of each part's path), summed.
FLOP_COLUMNS = {
    "vision (SigLIP or video encoder)": ("vision_tower", "backbone"),
    "projectors": ("multi_modal_projector", "projector", "change_projector"),
    "change features": ("difference_module", "key_change_perceiver"),
    "head": ("change_head",),
    "LM prefill": ("lm_prefill",),
    "LM decode": ("lm_decode",),
    "LM head": ("lm_head",),
}
QWEN2_7B = dict(
    model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1000000.0,
)


def levir_cd_mix(limit: int | None) -> tuple[list, list]:
    """The labelled LEVIR-CD pairs with their real masks, then the same pairs with empty masks (`limit` pairs in all,
    half of each)."""
    names = sorted(path.name for path in (DATA / "label").iterdir())
    if limit is not None:
        names = names[: max(limit // 2, 1)]
    pairs = [[str(DATA / "A" / name), str(DATA / "B" / name)] for name in names]
    empty = np.zeros((256, 256), np.uint8)
    return pairs + pairs, [str(DATA / "label" / name) for name in names] + [empty] * len(names)


def model_options(options: dict, config: RsccConfig) -> dict:
    """`MODELS` options for `config`: `bitemporal_filters: N` becomes N filters spread evenly over the vision layers,
    the last one after the last layer (Semantic-CC's after SAM's four global-attention layers)."""
    options = dict(options)
    count = options.pop("bitemporal_filters", 0)
    if count:
        num_layers = config.vision_config.num_hidden_layers
        options["bitemporal_filter_layers"] = [round(num_layers * (index + 1) / count) for index in range(count)]
    return options


def build_models(config: RsccConfig, variants: dict, device, dtype) -> dict:
    """Every model of `variants`, built on the meta device and given the modules of one fully built rscc model (and of
    one video encoder): one set of base weights (and buffers) in memory. Modules the source lacks (KCFI's,
    Semantic-CC's) are initialised for their model alone; a model with bi-temporal filters takes the vision tower's
    weights into its own tower, whose layers carry the filters' hooks."""
    torch.manual_seed(0)
    full_options = MODELS["full + no-change shortcut"][0]
    source = RsccForConditionalGeneration(RsccConfig(**{**config.to_dict(), **full_options})).to(device, dtype).eval()
    source.requires_grad_(False)  # inference only; the FLOP counter tracks modules through autograd otherwise
    video_encoders = {}  # one per encoder family, shared by the variants that use it
    for options, _ in variants.values():
        encoder = (options or {}).get("video_encoder_config")
        if encoder and encoder["model_type"] not in video_encoders:
            video_config = RsccConfig(**{**config.to_dict(), **options})
            video_encoders[encoder["model_type"]] = RsccVideoEncoder(video_config).to(device, dtype).eval()
            video_encoders[encoder["model_type"]].requires_grad_(False)
    rscc_options = {*RsccConfig.__dataclass_fields__} - {*LlavaOnevisionConfig.__dataclass_fields__}
    models = {}
    for name, (options, _) in variants.items():
        with torch.device("meta"):
            if options is None:
                stock_options = {k: v for k, v in config.to_dict().items() if k not in rscc_options | {"model_type"}}
                model = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**stock_options))
            else:
                options = model_options(options, config)
                model = RsccForConditionalGeneration(RsccConfig(**{**config.to_dict(), **options}))
        hooked_tower = getattr(model.model, "bitemporal_filter", None) is not None
        for child, module in list(model.model.named_children()):
            if module is None:
                continue
            if hooked_tower and child == "vision_tower":
                module.load_state_dict(source.model.vision_tower.state_dict(), assign=True)
                for buffer_name, buffer in source.model.vision_tower.named_buffers():  # non-persistent ones too
                    owner, _, leaf = buffer_name.rpartition(".")
                    setattr(module.get_submodule(owner), leaf, buffer)
            elif child == "video_encoder":
                model.model.video_encoder = video_encoders[model.config.video_encoder_config["model_type"]]
            elif getattr(source.model, child, None) is not None:
                setattr(model.model, child, getattr(source.model, child))
            else:
                module.to_empty(device=device)
                for submodule in module.modules():
                    model._init_weights(submodule)
                module.to(dtype).requires_grad_(False)
        model.model.image_newline = source.model.image_newline
        model.lm_head = source.lm_head
        left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
        if left_on_meta:
            raise RuntimeError(f"{name}: not given weights for {left_on_meta[:5]}")
        models[name] = model.eval()
    return models


class PrefillRecorder:
    """At each language-model call, the real positions of each sample (prefill) under the run in progress."""

    def __init__(self, models):
        self.run_name = None
        self.real_positions = defaultdict(list)
        language_models = {id(m.model.language_model): m.model.language_model for m in models}.values()
        self.handles = [lm.register_forward_pre_hook(self, with_kwargs=True) for lm in language_models]

    def __call__(self, module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        if embeds.shape[1] == 1:
            return
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self.real_positions[self.run_name].extend(mask.sum(1).tolist())
        else:
            self.real_positions[self.run_name].extend([embeds.shape[1]] * embeds.shape[0])

    def remove(self):
        for handle in self.handles:
            handle.remove()


def flops_by_part(model, caption) -> dict:
    """FLOPs of one captioning call by part (hooks on each part read the counter's total before and after each call);
    the language model's split into prefill (calls over more than one position) and decode."""
    counts = defaultdict(float)
    starts = {}

    def part_name(name, kwargs):
        if name != "model.language_model":
            return name.split(".")[-1]
        return "lm_prefill" if kwargs["inputs_embeds"].shape[1] > 1 else "lm_decode"

    def before(name):
        def hook(module, args, kwargs):
            starts[name] = counter.get_total_flops()

        return hook

    def after(name):
        def hook(module, args, kwargs, output):
            counts[part_name(name, kwargs)] += counter.get_total_flops() - starts[name]

        return hook

    handles = []
    for name in PARTS:
        try:
            module = model.get_submodule(name)
        except AttributeError:  # a part this model does not have
            continue
        if module is not None:
            handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True))
            handles.append(module.register_forward_hook(after(name), with_kwargs=True))
    try:
        with FlopCounterMode(display=False) as counter:
            caption()
    finally:
        for handle in handles:
            handle.remove()
    counts["total"] = float(counter.get_total_flops())
    return dict(counts)


def matmul_rate(device, dtype, size: int = 2048, seconds: float = 3.0) -> float:
    """The machine's sustained matmul rate (FLOP/s) for `dtype`: the limit the achieved rates are read against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start)


def measure(models: dict, variants: dict, processors: dict, pairs, masks, batch_sizes, repeats, device) -> dict:
    """Time every model on every batch of every batch size (runs alternate on each batch, best of `repeats`), record
    sequence lengths, and count FLOPs (separate pass, batch 1)."""

    def caption(name, batch, batch_size, **overrides):
        _, with_masks = variants[name]
        caption_samples(
            models[name], processors[name], pairs[batch], batch_size=batch_size,
            change_masks=masks[batch] if with_masks else None,
            **{"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, **overrides},
        )

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    names = list(models)
    for name in names:  # warm-up: first-call allocations are not the model's cost
        caption(name, slice(0, 1), 1, max_new_tokens=1, min_new_tokens=1)
    recorder = PrefillRecorder(models.values())
    timings = {name: {} for name in names}
    for batch_size in batch_sizes:
        batches = [slice(start, start + batch_size) for start in range(0, len(pairs), batch_size)]
        best = {name: [math.inf] * len(batches) for name in names}
        for repeat in range(repeats):
            for index, batch in enumerate(batches):
                for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                    recorder.run_name = (name, batch_size, repeat)
                    synchronize()
                    start = time.perf_counter()
                    caption(name, batch, batch_size)
                    synchronize()
                    best[name][index] = min(best[name][index], time.perf_counter() - start)
        for name in names:
            timings[name][batch_size] = sum(best[name])
    recorder.remove()
    results = {}
    for name in names:
        # Every pair has the same prompt: its text tokens are the prefill length less the image placeholders.
        prompt = processors[name](images=pairs[:1])
        text_tokens = int((prompt["input_ids"] != processors[name].image_token_id).sum())
        first_run = recorder.real_positions[(name, batch_sizes[0], 0)]
        skipped = len(pairs) - len(first_run)  # the no-change shortcut skips the language model
        flops = [flops_by_part(models[name], lambda i=i: caption(name, slice(i, i + 1), 1)) for i in range(len(pairs))]
        best_batch = min(timings[name], key=timings[name].get)
        results[name] = {
            "pairs_per_s": {str(size): len(pairs) / seconds for size, seconds in timings[name].items()},
            "best_batch_size": best_batch,
            "latency_s_batch_1": timings[name].get(1, math.nan) / len(pairs),
            "lm_sequence_length": statistics.mean(first_run) if first_run else 0.0,
            "visual_tokens_per_pair": statistics.mean(
                count - text_tokens for count in first_run
            ) if first_run else 0.0,
            "pairs_skipping_the_language_model": skipped,
            "gflop_per_pair": {
                part: statistics.mean(counts.get(part, 0.0) for counts in flops) / 1e9
                for part in {part for counts in flops for part in counts}
            },
            "seconds_best_batch": timings[name][best_batch],
        }
    return results


def encoding_processor(processor: RsccProcessor, config: RsccConfig) -> RsccProcessor:
    """`processor` with the placeholder layout (and, for a video encoder, the frame size and normalisation) of
    `config`'s pair encoding."""
    options = processor_options(config)
    image_processor = processor.image_processor
    if "image_processor_options" in options:
        image_processor = RsccImageProcessor.from_image_processor(image_processor, **options["image_processor_options"])
    return RsccProcessor(
        image_processor,
        processor.tokenizer,
        num_image_tokens=options.get("num_image_tokens", processor.num_image_tokens),
        pair_encoding=options["pair_encoding"],
        video_tubelet_size=options.get("video_tubelet_size", 1),
        visual_tokens=config.visual_tokens,
    )


def run_preset(
    preset: str, variant: str, limit: int | None, batch_sizes, repeats, device, dtype, names=None
) -> dict:
    """Measure the models of `VARIANTS[variant]` (those in `names` only, stock always, when given)."""
    pairs, masks = levir_cd_mix(limit)
    processor = make_processor(image_size=384, patch_size=14)
    image_ids = dict(
        image_token_index=processor.image_token_id,
        video_token_index=processor.tokenizer.convert_tokens_to_ids("<video>"),
    )
    video_encoders = VIDEO_ENCODERS["tiny" if preset == "tiny" else "real"]
    if preset == "tiny":
        config = tiny_config(processor.tokenizer, image_size=384, patch_size=14)
    else:
        config = llava_onevision_0_5b_config(**image_ids)
    variants = {
        name: (None if options is None else {
            **options, **({"video_encoder_config": video_encoders[options["video_encoder_config"]]}
                          if "video_encoder_config" in options else {})
        }, with_masks)
        for name, (options, with_masks) in VARIANTS[variant].items()
        if names is None or name == "stock" or name in names
    }
    models = build_models(config, variants, device, dtype)
    processors = {
        name: processor if options is None else encoding_processor(processor, models[name].config)
        for name, (options, _) in variants.items()
    }
    figures = {
        "preset": preset,
        "variants": variant,
        "pairs": len(pairs),
        "new_tokens": NEW_TOKENS,
        "parameters": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()},
        "runs": measure(models, variants, processors, pairs, masks, batch_sizes, repeats, device),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        figures["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def plan_7b(sequence_lengths: dict) -> dict:
    """Parameters, bf16 weight bytes and KV cache per pair of a 7B rscc model (meta device: nothing is computed)."""
    config = llava_onevision_0_5b_config(text_config=QWEN2_7B, use_change_head=True)
    with torch.device("meta"):
        model = RsccForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    text = config.text_config
    kv_bytes_per_position = 2 * text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 2
    return {
        "parameters": parameters,
        "weights_gb_bf16": parameters * 2 / 1e9,
        "kv_cache_mb_per_pair_bf16": {
            name: (length + NEW_TOKENS) * kv_bytes_per_position / 2**20 for name, length in sequence_lengths.items()
        },
    }


def markdown_table(figures: dict, limit_rate: float) -> str:
    runs = figures["runs"]
    stock = runs["stock"]
    sizes = list(stock["pairs_per_s"])
    header = (
        "| model | parameters added (M) | " + " | ".join(f"pairs/s (batch {size})" for size in sizes)
        + " | vs stock (best batch) | latency at batch 1 (s) | visual tokens / pair | LM length | "
        f"GFLOP / pair: {', '.join(FLOP_COLUMNS)} | achieved / limit |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, run in runs.items():
        best = run["pairs_per_s"][str(run["best_batch_size"])]
        stock_best = stock["pairs_per_s"][str(stock["best_batch_size"])]
        flops = run["gflop_per_pair"]
        parts = ", ".join(f"{sum(flops.get(part, 0.0) for part in column):.3g}" for column in FLOP_COLUMNS.values())
        achieved = flops["total"] * 1e9 * figures["pairs"] / run["seconds_best_batch"]
        added = (figures["parameters"][name] - figures["parameters"]["stock"]) / 1e6
        lines.append(
            f"| {name} | {added:.1f} | " + " | ".join(f"{run['pairs_per_s'][size]:.3f}" for size in sizes)
            + f" | {best / stock_best:.2f}x | {run['latency_s_batch_1']:.2f} | {run['visual_tokens_per_pair']:.0f} | "
            f"{run['lm_sequence_length']:.0f} | {parts} | {achieved / limit_rate:.2f} |"
        )
    return "\n".join(lines)


def write_readme(path: Path, markers: str, section: str) -> None:
    """Replace the text between the results markers `markers` of `path` (`<!-- results:MARKERS:start -->` ...
    `<!-- results:MARKERS:end -->`, appended at the end when missing); a preset's markers are its name."""
    start, end = f"<!-- results:{markers}:start -->", f"<!-- results:{markers}:end -->"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if start not in text or end not in text:
        text = f"{text.rstrip()}\n\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{section}\n{end}{after}")


def plan_7b_table(figures: dict) -> str:
    lines = [
        f"7B (Qwen2-7B language model, SigLIP-so400m, difference module and change head; built on the meta device): "
        f"{figures['parameters'] / 1e9:.2f}B parameters, {figures['weights_gb_bf16']:.1f} GB of bf16 weights. KV cache "
        f"per pair in bf16 at the language-model lengths the tiny preset measures, plus {NEW_TOKENS} new tokens:",
        "",
        "| model | KV cache per pair (MB) |",
        "|---|---|",
    ]
    lines += [f"| {name} | {size:.1f} |" for name, size in figures["kv_cache_mb_per_pair_bf16"].items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "real", "7b"], default="tiny")
    parser.add_argument("--variants", choices=sorted(VARIANTS), default="options",
                        help="rscc options (the default) or pair encodings, against stock")
    parser.add_argument("--pairs", type=int, help="pairs of the workload (half real masks, half empty); all by default")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--readme", help="write the Markdown table between the results markers of this file")
    parser.add_argument("--models", nargs="+", choices=[*MODELS, *ENCODING_MODELS],
                        help="measure these models of the variants and stock only")
    parser.add_argument("--section", help="name of the README results markers to write between (default: the preset's, "
                                          "PRESET-encodings for the encodings)")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.preset == "7b":
        tiny = run_preset("tiny", "options", args.pairs, [8], 1, device, torch.float32)
        figures = {"preset": "7b", **plan_7b({n: r["lm_sequence_length"] for n, r in tiny["runs"].items()})}
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        if args.readme:
            write_readme(Path(args.readme), "7b", plan_7b_table(figures))
        print(json.dumps(figures, indent=2))
        return figures
    limit_rate = matmul_rate(device, dtype)
    figures = run_preset(
        args.preset, args.variants, args.pairs, sorted(set(args.batch_sizes)), args.repeats, device, dtype, args.models
    )
    figures.update(
        matmul_limit_gflop_per_s=limit_rate / 1e9,
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads, {args.device} {args.dtype}",
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
        date=date.today().isoformat(),
    )
    table = markdown_table(figures, limit_rate)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if args.readme:
        heading = (
            f"Preset `{args.preset}`, workload `levir-cd-mix` ({figures['pairs']} pairs, half with empty masks, "
            f"{NEW_TOKENS} new tokens, greedy), {figures['machine']}, matmul limit "
            f"{figures['matmul_limit_gflop_per_s']:.0f} GFLOP/s, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, {figures['date']}:"
        )
        section = args.section or (args.preset if args.variants == "options" else f"{args.preset}-{args.variants}")
        write_readme(Path(args.readme), section, f"{heading}\n\n{table}")
    print(table)
    return figures


if __name__ == "__main__":
    main()
