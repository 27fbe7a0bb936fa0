"""One training stage, end to end: load the model and data, train, validate, save a complete checkpoint."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Optional

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..data import load_change_dataset, streaming_caption_view
from ..evaluation import (
    ScoringFunction,
)
from ..loading import load_model_and_processor
from .arguments import StageRunArguments, parse_arguments
from .lora import apply_lora, merge_lora
from .memory import compile_layers
from .stages import ADAPTER_FOLDER, LORA_PART, STAGE_RECORD_FILE, configure_trainable
from .trainer import (
    CaptionRedrawCallback,
    ChangeCaptionCollator,
    EpochCaptionDataset,
    GenerationValidation,
    RsccTrainer,
    is_peft_model,
    load_split,
)

logger = logging.get_logger(__name__)


def deepspeed_config_of(training_kwargs: dict) -> Optional[dict]:
    """The DeepSpeed config named by the training arguments (a path or a dict), or None."""
    config = training_kwargs.get("deepspeed")
    if config is None or isinstance(config, dict):
        return config
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"--deepspeed {config}: no such file")
    return json.loads(path.read_text())


def weights_dtype(training_kwargs: dict) -> torch.dtype:
    """DeepSpeed keeps fp32 master weights itself and runs the model in its mixed-precision dtype, so load in that
    dtype; without DeepSpeed the Trainer autocasts fp32 weights."""
    if deepspeed_config_of(training_kwargs) is None:
        return torch.float32
    if training_kwargs.get("bf16"):
        return torch.bfloat16
    return torch.float16 if training_kwargs.get("fp16") else torch.float32


def import_scoring_function(spec: str) -> ScoringFunction:
    """The function named by `MODULE:FUNCTION` (e.g. `my_metrics:score`)."""
    module_name, separator, function_name = spec.partition(":")
    if not separator or not module_name or not function_name:
        raise ValueError(f"--validation_scoring_function {spec!r}: expected MODULE:FUNCTION")
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise ValueError(f"--validation_scoring_function {spec!r}: {module_name} has no function {function_name}")
    return function


def _configure_cpu_deepspeed_processes(training_kwargs: dict) -> None:
    """Let several CPU processes run DeepSpeed (the CPU tests; GPU launches never get here).

    accelerate 1.15 gives a CPU-only DeepSpeed launch no process-group backend, so every rank takes itself for the
    only one (world size 1, wrong DeepSpeed batch sizes) while DeepSpeed sees them all. Setting up the process state
    with gloo first, and letting `TrainingArguments` reuse it, gives every rank the true world size.
    """
    if (
        training_kwargs.get("deepspeed") is None
        or torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true"
        or int(os.environ.get("WORLD_SIZE", "1")) < 2
    ):
        return
    from accelerate import PartialState

    PartialState(backend="gloo")
    config = training_kwargs.get("accelerator_config") or {}
    if isinstance(config, str):
        config = json.loads(Path(config).read_text())
    training_kwargs["accelerator_config"] = {**config, "use_configured_state": True}


def _resume_path(value: Optional[str], output_dir: str) -> Optional[str]:
    if value is None:
        return None
    if value.lower() in ("last", "latest", "true"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder")
    return value


def _with_no_change_caption(config_overrides: dict | None, no_change_caption: str | None) -> dict:
    """The model options, with the sentence the unchanged pairs are trained to give as the model's
    `no_change_caption`: the one its no-change shortcut answers with, so training and inference agree."""
    config_overrides = dict(config_overrides or {})
    if no_change_caption is None:
        return config_overrides
    configured = config_overrides.setdefault("no_change_caption", no_change_caption)
    if configured != no_change_caption:
        raise ValueError(
            f"--no_change_caption {no_change_caption!r} differs from model_config_overrides' no_change_caption "
            f"{configured!r}: give the sentence once (--no_change_caption sets both)"
        )
    return config_overrides


def _check_stage_options(arguments: StageRunArguments, stage, training_kwargs: dict) -> None:
    """Refuse option combinations that cannot train as asked, before anything loads."""
    stage_args = arguments.stage
    use_lora = stage_args.lora_r > 0
    if use_lora and stage.objective == "change" and stage_args.lora_parts != ["vision_tower"]:
        raise ValueError(f"LoRA on {stage_args.lora_parts}: a change-loss-only stage reaches the vision tower alone; "
                         "set lora_parts to [vision_tower] or train without adapters")
    if LORA_PART in (*stage.trainable_parts, *stage.optional_parts) and not use_lora:
        raise ValueError(f"stage {stage.name!r} trains {LORA_PART} but --lora_r is 0; set a LoRA rank")
    doubly_trained = sorted(set(stage_args.lora_parts) & set(stage.trainable_parts)) if use_lora else []
    if doubly_trained:
        raise ValueError(f"LoRA adapts {doubly_trained}, which the stage also trains in full; drop them from "
                         "trainable_parts (train the adapters) or from lora_parts (train the weights)")
    ds_config = deepspeed_config_of(training_kwargs)
    uses_zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    if use_lora and uses_zero3:
        raise ValueError("LoRA runs use ZeRO-2 (train/deepspeed/zero2.json): merging adapters into ZeRO-3-partitioned "
                         "weights is not supported")
    if arguments.model.compile_layers and uses_zero3:
        raise ValueError("--compile_layers does not work under ZeRO-3, whose hooks gather each layer's partitioned "
                         "weights; use ZeRO-2 (train/deepspeed/zero2.json) or leave it off")
    if arguments.model.activation_memory_budget is not None and (
        training_kwargs.get("activation_checkpointing") or training_kwargs.get("gradient_checkpointing")
    ):
        raise ValueError("--activation_memory_budget replaces --activation_checkpointing, which would recompute each "
                         "checkpointed layer whole as well; set one of them")


def _generation_validation(
    arguments: StageRunArguments, processor, training_args: TrainingArguments, seed: int, scoring_function
) -> tuple[EpochCaptionDataset, GenerationValidation]:
    """The validation split as an evaluation dataset (one random caption per pair) and its generation validation."""
    data_args, validation_args = arguments.data, arguments.validation
    validation_pairs = load_split(
        data_args.dataset_name_or_path,
        data_args.validation_split,
        data_args.max_validation_samples,
        data_args.dataset_cache_dir,
    )
    eval_dataset = EpochCaptionDataset(validation_pairs, "random_choice", seed, data_args.no_change_caption)
    if scoring_function is None and validation_args.validation_scoring_function:
        scoring_function = import_scoring_function(validation_args.validation_scoring_function)
    validation = GenerationValidation(
        processor,
        validation_pairs,
        scoring_function=scoring_function,
        convention=validation_args.validation_convention,
        batch_size=training_args.per_device_eval_batch_size,
        max_new_tokens=validation_args.validation_max_new_tokens,
        predictions_dir=(
            Path(training_args.output_dir) / "predictions" if validation_args.save_validation_predictions else None
        ),
        generate_kwargs={"num_beams": validation_args.validation_num_beams},
    )
    return eval_dataset, validation


def _with_lora_adapters(model, stage, stage_args):
    """The model with LoRA adapters as `stage_args` ask, and the stage with the adapters among its trained parts."""
    if LORA_PART not in stage.trainable_parts:
        stage = dataclasses.replace(stage, trainable_parts=(*stage.trainable_parts, LORA_PART))
    model = apply_lora(
        model,
        r=stage_args.lora_r,
        alpha=stage_args.lora_alpha,
        dropout=stage_args.lora_dropout,
        parts=stage_args.lora_parts,
        modules=stage_args.lora_modules,
        last_layers=stage_args.lora_last_layers,
    )
    return model, stage


def run_stage(
    arguments: StageRunArguments,
    scoring_function: Optional[ScoringFunction] = None,
    callbacks: Optional[list] = None,
) -> RsccTrainer:
    """Train one stage: load the model, set what trains, train (validating by generation), save the output folder.

    The output folder is a complete rscc checkpoint (model safetensors, config, processor) plus `rscc_stage.json`
    (the stage, what trained, the inputs); a LoRA run also keeps its adapter (peft format, safetensors) and any
    other trained weights under `adapter/`, and saves the merged model as the checkpoint.

    Args:
        arguments: From [`parse_arguments`].
        scoring_function: Validation scorer; defaults to `--validation_scoring_function`, else
            `rscc.metrics.evaluate_captions`.
        callbacks: Extra `TrainerCallback`s.

    Returns:
        The trainer after training.
    """
    stage = arguments.stage.resolve()
    stage_args, data_args, validation_args = arguments.stage, arguments.data, arguments.validation
    training_kwargs = dict(arguments.training)
    _check_stage_options(arguments, stage, training_kwargs)

    # Model first: under ZeRO-3, TrainingArguments switches DeepSpeed's partitioned initialisation on. Seeded, so the
    # modules a LLaVA-OneVision checkpoint lacks start the same in every run (the Trainer seeds only later).
    set_seed(training_kwargs.get("seed", TrainingArguments.seed))
    model, processor = load_model_and_processor(
        arguments.model.model_name_or_path,
        _with_no_change_caption(arguments.model.model_config_overrides, data_args.no_change_caption),
        weights_dtype(training_kwargs),
    )
    if stage_args.lora_r > 0:
        model, stage = _with_lora_adapters(model, stage, stage_args)
    report = configure_trainable(model, stage)
    if arguments.model.compile_layers:
        compile_layers(model, arguments.model.activation_memory_budget)
    if int(os.environ.get("RANK", "0")) == 0:  # what trains, once per run rather than once per process
        logger.warning(str(report))

    evaluates = str(training_kwargs.get("eval_strategy", "no")) != "no"
    if evaluates:
        training_kwargs.setdefault("metric_for_best_model", "S_m")
    # The caption view's own columns are an index; the collator needs the pair columns it returns.
    training_kwargs["remove_unused_columns"] = False
    if data_args.streaming:
        # Each process reads its own share of the stream: accelerate's dispatcher would instead cut every tensor of a
        # batch to the batch size, and a batch holds two images per pair.
        accelerator_config = dict(training_kwargs.get("accelerator_config") or {})
        training_kwargs["accelerator_config"] = {**accelerator_config, "dispatch_batches": False}
    _configure_cpu_deepspeed_processes(training_kwargs)
    training_args = TrainingArguments(**training_kwargs)
    resume = _resume_path(training_args.resume_from_checkpoint, training_args.output_dir)

    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train_dataset, epoch_callbacks = _training_data(data_args, stage, seed, training_args.max_steps)
    eval_dataset, validation = None, None
    if evaluates:
        eval_dataset, validation = _generation_validation(arguments, processor, training_args, seed, scoring_function)

    trainer = RsccTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ChangeCaptionCollator(processor),
        processing_class=processor,
        callbacks=[*epoch_callbacks, *(callbacks or [])],
        stage=stage,
        generation_validation=validation,
        validation_loss=validation_args.validation_loss,
    )
    trainer.train(resume_from_checkpoint=resume)
    save_stage_output(trainer, processor, arguments, stage, report)
    return trainer


def _training_data(data_args, stage, seed: int, max_steps: int) -> tuple:
    """The training examples and the callbacks that follow their epochs: a caption view redrawn each epoch, or, with
    `--streaming`, a stream of the split's Parquet shards (its length unknown, so the run needs `--max_steps`)."""
    if not data_args.streaming:
        pairs = load_split(
            data_args.dataset_name_or_path, data_args.train_split, data_args.max_train_samples,
            data_args.dataset_cache_dir,
        )
        dataset = EpochCaptionDataset(pairs, stage.caption_mode, seed, data_args.no_change_caption)
        return dataset, [CaptionRedrawCallback(dataset)]
    if max_steps is None or max_steps <= 0:
        raise ValueError("--streaming reads a split of unknown length: give --max_steps (the optimizer steps to run)")
    stream = load_change_dataset(
        data_args.dataset_name_or_path, split=data_args.train_split, streaming=True,
        cache_dir=data_args.dataset_cache_dir,
    )
    if data_args.max_train_samples is not None:
        stream = stream.take(data_args.max_train_samples)
    view = streaming_caption_view(stream, stage.caption_mode, seed=seed, no_change_caption=data_args.no_change_caption)
    return view, []


def save_stage_output(trainer: RsccTrainer, processor, arguments: StageRunArguments, stage, report) -> Path:
    """Write the stage's output folder: a complete rscc checkpoint, the stage record, and LoRA adapters if any."""
    output_dir = Path(trainer.args.output_dir)
    if is_peft_model(trainer.model):
        trainer.save_model(str(output_dir / ADAPTER_FOLDER))
        if trainer.args.should_save:
            merged = merge_lora(trainer.accelerator.unwrap_model(trainer.model))
            merged.save_pretrained(output_dir)
            processor.save_pretrained(output_dir)
        trainer.accelerator.wait_for_everyone()
    else:
        trainer.save_model(str(output_dir))
    if trainer.args.should_save:
        record = {
            "stage": stage.to_dict(),
            "trainable": report.to_dict(),
            "model_name_or_path": arguments.model.model_name_or_path,
            "model_config_overrides": arguments.model.model_config_overrides,
            "dataset_name_or_path": arguments.data.dataset_name_or_path,
            "train_split": arguments.data.train_split,
            "lora": dataclasses.asdict(arguments.stage) if arguments.stage.lora_r else None,
            "global_step": trainer.state.global_step,
            "best_model_checkpoint": trainer.state.best_model_checkpoint,
            "best_metric": trainer.state.best_metric,
        }
        (output_dir / STAGE_RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return output_dir


def main(stage: str, argv: Optional[list[str]] = None) -> RsccTrainer:
    """Entry point of `train/stage{1,2,3}.py`: parse the command line (and `--config`), run the stage, then close
    the process group of a distributed run, so that no communication thread is left running when the process exits
    (which aborts it: "terminate called without an active exception")."""
    trainer = run_stage(parse_arguments(stage, argv))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return trainer
