"""Core model figures at the real LLaVA-OneVision-0.5B dimensions, random weights, CPU fp32.

    python benchmarks/bench_core.py [--json out.json]

Reports the difference module's parameter count, and for one real LEVIR-CC pair the max |logit difference|
between a fresh rscc model and the stock LLaVA-OneVision model holding the same base weights, plus the time of
one forward pass of each (the cost the difference module adds).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from rscc import RsccForConditionalGeneration
from rscc.checkpoints import llava_onevision_0_5b_config, make_processor

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "levir_cc"


def timed_forward(model, inputs) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(**inputs).logits
    return logits, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    processor = make_processor(image_size=384, patch_size=14)
    tokenizer = processor.tokenizer
    config = llava_onevision_0_5b_config(
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
    )
    figures = {"threads": torch.get_num_threads()}

    with torch.device("meta"):
        meta_model = RsccForConditionalGeneration(config)
    difference = meta_model.model.difference_module
    figures["difference_module_parameters"] = sum(p.numel() for p in difference.parameters())
    figures["difference_module_parameters_by_part"] = {
        name: sum(p.numel() for p in part.parameters()) for name, part in difference.named_children()
    }
    figures["model_parameters"] = sum(p.numel() for p in meta_model.parameters())
    del meta_model

    base_options = {k: v for k, v in config.to_dict().items() if not k.startswith("difference_")}
    base_options.pop("use_difference_integration")
    base_options.pop("model_type")
    stock = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**base_options)).eval()
    model = RsccForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(stock.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("model.difference_module.") for name in missing)
    model.tie_weights()

    name = "train_000016.png"
    inputs = processor(images=[[EXAMPLE / "A" / name, EXAMPLE / "B" / name]])
    figures["sequence_length"] = inputs["input_ids"].shape[1]
    stock_logits, figures["stock_forward_s"] = timed_forward(stock, inputs)
    rscc_logits, figures["rscc_forward_s"] = timed_forward(model, inputs)
    figures["max_abs_logit_difference"] = (stock_logits - rscc_logits).abs().max().item()
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
