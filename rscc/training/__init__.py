"""Staged training on the Hugging Face Trainer: stages as data, recipes as YAML, DeepSpeed ZeRO through `--deepspeed`.

A stage says which parts of the model train (`PARTS` names them by parameter-name prefix), at which learning-rate
multiplier per part, how captions are drawn per epoch, and which loss drives it. `STAGES` holds CCExpert's three:

    stage1  projector + difference module (+ change head when the model has one); one example per caption
    stage2  everything, vision tower at 0.2x learning rate; one example per caption
    stage3  everything, vision tower at 0.2x; one random caption per pair per epoch (domain fine-tuning)

A recipe (`train/recipes/*.yaml`) picks a stage, may override its fields, and sets `TrainingArguments`; a stage's
output folder is a complete rscc checkpoint (model + processor), the next stage's `--model_name_or_path`.
The scripts `train/stage{1,2,3}.py` only call [`main`] with their stage's name.

Under ZeRO-3 the model is built before `TrainingArguments` exists (DeepSpeed would otherwise initialise every
sub-model partitioned), so [`parse_arguments`] returns the training arguments as keyword arguments and
[`run_stage`] builds `TrainingArguments` after the model.

The package, one concept a module: `stages` (parts and stages as data), `lora` (peft adapters), `memory` (compiled
layers, activation-memory budget), `trainer` (the Trainer, its data views, collator, callbacks and validation),
`arguments` (dataclass arguments and recipe parsing), `run` (one stage end to end).
"""

from ..loading import load_model_and_processor
from .arguments import (
    DataArguments,
    ModelArguments,
    StageArguments,
    StageRunArguments,
    ValidationArguments,
    parse_arguments,
)
from .lora import apply_lora, load_trained_parts, lora_target_pattern, merge_lora
from .memory import compile_layers
from .run import import_scoring_function, main, run_stage, save_stage_output
from .stages import (
    LORA_PART,
    PARTS,
    STAGES,
    StageSpec,
    TrainableReport,
    configure_trainable,
    optimizer_parameter_groups,
    part_of,
    resolve_stage,
)
from .trainer import (
    CaptionRedrawCallback,
    ChangeCaptionCollator,
    EpochCaptionDataset,
    GenerationValidation,
    RsccTrainer,
    TaskLossWeighting,
    load_saved_weights,
    load_split,
)

__all__ = [
    "PARTS",
    "LORA_PART",
    "STAGES",
    "StageSpec",
    "resolve_stage",
    "part_of",
    "configure_trainable",
    "TrainableReport",
    "optimizer_parameter_groups",
    "lora_target_pattern",
    "apply_lora",
    "merge_lora",
    "compile_layers",
    "load_trained_parts",
    "load_saved_weights",
    "EpochCaptionDataset",
    "CaptionRedrawCallback",
    "TaskLossWeighting",
    "ChangeCaptionCollator",
    "load_split",
    "load_model_and_processor",
    "GenerationValidation",
    "RsccTrainer",
    "ModelArguments",
    "DataArguments",
    "StageArguments",
    "ValidationArguments",
    "StageRunArguments",
    "parse_arguments",
    "import_scoring_function",
    "run_stage",
    "save_stage_output",
    "main",
]
