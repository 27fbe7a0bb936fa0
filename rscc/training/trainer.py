"""The Trainer rscc trains with, its data views, collator, callbacks and validation by generation."""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import EvalLoopOutput
from transformers.utils import logging

from ..data import caption_view, load_change_dataset
from ..data.schema import sample_images
from ..evaluation import (
    ScoringFunction,
    default_scoring_function,
    generate_predictions,
    numeric_metrics,
    reference_captions,
    write_predictions,
)
from ..captioning import DEFAULT_MAX_NEW_TOKENS
from .lora import load_trained_parts
from .memory import peak_memory_mb
from .stages import LORA_PART, LOSS_TERMS, TRAINED_PARTS_FILE, StageSpec, optimizer_parameter_groups, part_of

logger = logging.get_logger(__name__)

class EpochCaptionDataset(torch.utils.data.Dataset):
    """A caption view of a split ([`rscc.data.caption_view`]) that follows the training epoch.

    In `random_choice` mode each epoch draws one caption per pair from (seed, epoch), so a rerun, and a run resumed
    from a checkpoint, see the same captions in the same epoch. [`CaptionRedrawCallback`] calls `set_epoch`.
    """

    def __init__(self, pairs, mode: str, seed: int, no_change_caption: Optional[str] = None):
        self.pairs, self.mode, self.seed, self.no_change_caption = pairs, mode, seed, no_change_caption
        self.epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if epoch == self.epoch or (self.mode == "flatten" and self.epoch is not None):
            return  # a flattened view is the same every epoch
        self.epoch = epoch
        self.view = caption_view(
            self.pairs, self.mode, seed=self.seed, epoch=epoch, no_change_caption=self.no_change_caption
        )

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, index: int) -> dict:
        return self.view[int(index)]


class CaptionRedrawCallback(TrainerCallback):
    """Sets the training dataset's epoch at the start of each epoch, before the epoch's data loader starts.

    `state.epoch` then holds the number of finished epochs (also after resuming from a checkpoint), which is the
    index of the epoch about to run.
    """

    def __init__(self, dataset: EpochCaptionDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # Epoch boundaries are exact (k steps / k steps); the margin only guards a float sum just below an integer.
        self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class TaskLossWeighting(TrainerCallback, ExportableState):
    """Combines the caption and change-detection losses under the weightings that need more than one batch
    (`change_loss_weighting` `"dwa"` or `"normalized"`; the model's own `loss` is the fixed weighting).

    `"dwa"` (KCFI's dynamic weight averaging): `w_k = 2 exp(r_k / T) / sum_i exp(r_i / T)`, `r_k` the ratio of task k's
    loss at the two previous steps (both weights 1 for the first two). A step is an optimizer step: the losses of its
    micro-batches, averaged over them and over the processes of a distributed run (so every process weights alike),
    make one history entry at `on_step_end`. The history is kept in checkpoints (`trainer_state.json`), so a resumed run
    weights as the uninterrupted one. `"normalized"` (Change-Agent): each loss divided by its own detached value.

    Args:
        weighting (`str`): `"dwa"` or `"normalized"`.
        temperature (`float`, *optional*, defaults to 2.0): `T` of `"dwa"`.
        history (`list[list[float]]`, *optional*): the (caption, change) losses of the last two steps, oldest first.
    """

    def __init__(self, weighting: str, temperature: float = 2.0, history: Optional[list] = None):
        if weighting not in ("dwa", "normalized"):
            raise ValueError(f"weighting={weighting!r}: expected 'dwa' or 'normalized' (the model applies 'fixed')")
        self.weighting = weighting
        self.temperature = temperature
        self.history = [list(losses) for losses in history or []][-2:]
        self.step_losses: list[torch.Tensor] = []

    def combine(self, caption_loss: torch.Tensor, change_loss: torch.Tensor, training: bool) -> torch.Tensor:
        """The weighted loss; in training, the losses are also recorded for the step's history entry."""
        tiny = torch.finfo(torch.float32).tiny
        if self.weighting == "normalized":
            return sum(loss / loss.detach().clamp_min(tiny) for loss in (caption_loss, change_loss))
        losses = torch.stack([caption_loss, change_loss.to(caption_loss.dtype)])
        if len(self.history) < 2:
            weights = torch.ones_like(losses)
        else:
            before_previous, previous = torch.tensor(self.history, dtype=torch.float32, device=losses.device)
            rates = previous / before_previous.clamp_min(tiny)
            weights = len(losses) * torch.softmax(rates / self.temperature, dim=0).to(losses.dtype)
        if training:
            self.step_losses.append(losses.detach().float())
        return (weights * losses).sum()

    def on_step_end(self, args, state, control, **kwargs):
        if self.weighting != "dwa":
            return
        recorded = self.step_losses
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        # Sums and a count: a process without both losses this step still takes part in the all-reduce.
        totals = torch.zeros(3, device=recorded[0].device if recorded else args.device)
        if recorded:
            totals[:2] = torch.stack(recorded).sum(dim=0)
            totals[2] = len(recorded)
        recorded.clear()
        if distributed:
            torch.distributed.all_reduce(totals)
        if totals[2] > 0:
            self.history = [*self.history, (totals[:2] / totals[2]).tolist()][-2:]

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run's trainer_state.json holds the history of the checkpoint.
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, dict):
            self.history = [list(losses) for losses in saved["attributes"]["history"]]

    def state(self) -> dict:
        return {
            "args": {"weighting": self.weighting, "temperature": self.temperature},
            "attributes": {"history": self.history},
        }


class ChangeCaptionCollator:
    """Turns examples of a caption view into a training batch with the processor (pairs + target captions).

    Change masks are passed on (`change_masks=`) only when the processor's `__call__` takes that argument, so the
    same collator serves processors with and without change-mask support.
    """

    def __init__(self, processor):
        self.processor = processor
        self.passes_change_masks = "change_masks" in inspect.signature(processor.__call__).parameters

    def __call__(self, examples: list[dict]):
        samples = [sample_images(example) for example in examples]
        captions = [example["caption"] for example in examples]
        extra = {}
        if self.passes_change_masks:
            extra["change_masks"] = [example.get("change_mask") for example in examples]
        return self.processor(images=samples, captions=captions, **extra)


def load_split(path_or_repo: str, split: str, max_samples: Optional[int] = None, cache_dir: Optional[str] = None):
    """One split of a change-captioning dataset; a missing split is an error naming the splits there are."""
    splits = load_change_dataset(path_or_repo, cache_dir=cache_dir)
    if split not in splits:
        raise ValueError(f"dataset {path_or_repo} has no split {split!r}; it has {sorted(splits)}")
    dataset = splits[split]
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


class GenerationValidation:
    """Validation by generation: caption the validation split, score the captions, return the metrics.

    [`RsccTrainer`] calls it from its evaluation loop, so its metrics are logged as `eval_<metric>`, reach the
    callbacks, and can drive `metric_for_best_model` / `load_best_model_at_end`. (A `TrainerCallback` could not:
    `on_evaluate` runs after the Trainer has logged the metrics.) With several processes each captions a shard of
    equal length (the last pair repeated where needed, since ZeRO-3 needs every rank in every forward); predictions
    are gathered and de-duplicated by pair id before scoring on the main process.

    Args:
        processor: The model's processor.
        dataset: The validation split.
        scoring_function: `(predictions {id: caption}, references {id: [captions]}) -> report`; the report's numeric
            entries become metrics. Defaults to `rscc.metrics.evaluate_captions` with `convention`.
        convention: Scoring convention of the default scoring function.
        batch_size: Pairs per `generate` call.
        max_new_tokens: Caption length limit.
        predictions_dir: Where to write `validation-step<N>.jsonl` files, if anywhere.
        generate_kwargs: Passed to `generate` (e.g. `num_beams`).
    """

    def __init__(
        self,
        processor,
        dataset,
        scoring_function: Optional[ScoringFunction] = None,
        convention: str = "ccexpert",
        batch_size: int = 8,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        predictions_dir=None,
        generate_kwargs: Optional[dict] = None,
    ):
        self.processor = processor
        self.dataset = dataset
        self.references = reference_captions(dataset)
        self.scoring_function = scoring_function or default_scoring_function(convention)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.predictions_dir = None if predictions_dir is None else Path(predictions_dir)
        self.generate_kwargs = dict(generate_kwargs or {})

    def _shard(self, index: int, count: int):
        indices = list(range(index, len(self.dataset), count))
        length = math.ceil(len(self.dataset) / count)
        indices += [len(self.dataset) - 1] * (length - len(indices))
        return self.dataset.select(indices)

    def __call__(self, model, accelerator, step: int) -> dict[str, float]:
        from accelerate.utils import broadcast_object_list, gather_object

        shard = self._shard(accelerator.process_index, accelerator.num_processes)
        local = generate_predictions(
            model,
            self.processor,
            shard,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            progress=accelerator.is_local_main_process,
            **self.generate_kwargs,
        )
        gathered = gather_object([local]) if accelerator.num_processes > 1 else [local]
        merged = {}
        for predictions in gathered:
            merged.update(predictions)
        predictions = {identifier: merged[identifier] for identifier in self.references}
        metrics = [None]
        if accelerator.is_main_process:
            if self.predictions_dir is not None:
                write_predictions(predictions, self.predictions_dir / f"validation-step{step}.jsonl")
            metrics[0] = numeric_metrics(self.scoring_function(predictions, self.references))
        if accelerator.num_processes > 1:
            broadcast_object_list(metrics, from_process=0)
        return metrics[0]


class RsccTrainer(Trainer):
    """The Trainer with stage-aware optimizer groups, loss-term / per-part learning-rate / throughput logging,
    validation by generation, LoRA checkpoints that keep the other trained parts, and the loss weightings that need
    more than one batch ([`TaskLossWeighting`], a callback whose history is kept in checkpoints).

    Args:
        stage: The [`StageSpec`] being trained (learning-rate multipliers and objective).
        generation_validation: A [`GenerationValidation`] run at each evaluation, or None for the Trainer's
            loss-only evaluation.
        validation_loss: With `generation_validation`, also compute the loss on the evaluation dataset.
        *args, **kwargs: As for `Trainer`.
    """

    def __init__(
        self,
        *args,
        stage: StageSpec,
        generation_validation: Optional[GenerationValidation] = None,
        validation_loss: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.generation_validation = generation_validation
        self.validation_loss = validation_loss
        if stage.objective == "change":
            # The change loss is a per-batch mean, not normalised over the accumulated batch's tokens.
            self.loss_is_scaled_for_ga = False
        # Per-process sums since the last log, on the loss's device so recording never waits for the device:
        # [samples, caption_loss sum, present, change_loss sum, present]. Started at the first micro-batch of a
        # (resumed) run.
        self._interval = None
        self._interval_start = None
        self._interval_step = None
        self._step_learning_rates: dict[str, float] = {}
        config = self.model.config
        if getattr(config, "change_loss_weighting", "fixed") != "fixed":
            self.add_callback(TaskLossWeighting(config.change_loss_weighting, config.change_loss_dwa_temperature))

    # ---- optimizer --------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = optimizer_parameter_groups(
                opt_model,
                self.stage,
                self.args.learning_rate,
                self.args.weight_decay,
                set(self.get_decay_parameter_names(opt_model)),
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if self._offloads_optimizer():
                # ZeRO-Offload steps the optimizer on the CPU: DeepSpeed's CPU Adam does that fast, and DeepSpeed
                # refuses a torch optimizer there.
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                optimizer_cls = DeepSpeedCPUAdam
                optimizer_kwargs = {
                    "lr": self.args.learning_rate,
                    "betas": (self.args.adam_beta1, self.args.adam_beta2),
                    "eps": self.args.adam_epsilon,
                    "adamw_mode": True,
                }
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _offloads_optimizer(self) -> bool:
        if not self.is_deepspeed_enabled:
            return False
        zero = self.accelerator.state.deepspeed_plugin.hf_ds_config.config.get("zero_optimization", {})
        return (zero.get("offload_optimizer") or {}).get("device", "none") == "cpu"

    # ---- loss and logs ----------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and inputs.get("labels") is not None:
            # Training needs no logits over the image positions: the LM head runs on the caption window only.
            inputs = {**inputs, "labelled_logits_only": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        terms = {name: outputs.get(name) for name in LOSS_TERMS} if isinstance(outputs, Mapping) else {}
        # Looked up each time: restoring callback states from a checkpoint replaces the callback object.
        weighting = next((c for c in self.callback_handler.callbacks if isinstance(c, TaskLossWeighting)), None)
        if weighting is not None and None not in terms.values():
            # The Trainer may have scaled the model's loss (tokens averaged across processes); the weighted loss
            # takes the same scale.
            scale = loss.detach() / outputs["loss"].detach().clamp_min(torch.finfo(torch.float32).tiny)
            loss = scale * weighting.combine(terms["caption_loss"], terms["change_loss"], training=model.training)
        if self.stage.objective == "change":
            if terms.get("change_loss") is None:
                raise ValueError(
                    f"stage {self.stage.name!r} trains on the change loss alone, but the model returned no "
                    "change_loss; it needs a change head (use_change_head) and change masks in the dataset"
                )
            loss = terms["change_loss"]
        if model.training:
            self._record_interval(inputs, terms, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _record_interval(self, inputs, terms: dict, num_items_in_batch) -> None:
        device = inputs["input_ids"].device
        if self._interval is None or self._interval_step is None:
            self._interval = torch.zeros(1 + 2 * len(LOSS_TERMS), dtype=torch.float32, device=device)
            self._interval_start, self._interval_step = time.perf_counter(), self.state.global_step
        # The rates this optimizer step uses (the scheduler moves them after the step, before the Trainer logs).
        self._step_learning_rates = {}
        for group in self.optimizer.param_groups:
            if group.get("part") is not None:
                self._step_learning_rates.setdefault(group["part"], group["lr"])
        # Loss terms are accumulated as the Trainer accumulates `loss`: a term normalised over the whole accumulated
        # batch adds up over its micro-batches, a per-batch mean is divided by the accumulation steps first.
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        divisor = 1.0 if scaled else float(self.current_gradient_accumulation_steps)
        self._interval[0] += inputs["input_ids"].shape[0]
        for index, name in enumerate(LOSS_TERMS):
            value = terms.get(name)
            if value is not None:
                self._interval[1 + 2 * index] += value.detach().float().to(device) / divisor
                self._interval[2 + 2 * index] += 1.0 / divisor

    def train(self, *args, **kwargs):
        self._interval_step = None
        return super().train(*args, **kwargs)

    def log(self, logs: dict, start_time: Optional[float] = None) -> None:
        if "loss" in logs and self._interval is not None:
            logs.update(self._interval_logs())
        super().log(logs, start_time)

    def _interval_logs(self) -> dict:
        totals = self._interval
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        totals = totals.cpu()
        steps = max(self.state.global_step - self._interval_step, 1)
        now = time.perf_counter()
        logs = {"samples_per_second": round(totals[0].item() / max(now - self._interval_start, 1e-9), 3)}
        for index, name in enumerate(LOSS_TERMS):
            if totals[2 + 2 * index] > 0:
                # Sum over the interval's micro-batches, averaged over processes and optimizer steps.
                logs[name] = totals[1 + 2 * index].item() / self.accelerator.num_processes / steps
        logs.update({f"learning_rate/{part}": rate for part, rate in self._step_learning_rates.items()})
        logs["peak_memory_mb"] = peak_memory_mb(self.args.device)
        self._interval.zero_()
        self._interval_start, self._interval_step = now, self.state.global_step
        return logs

    # ---- validation -------------------------------------------------------------------------------------------
    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        if self.generation_validation is None or description != "Evaluation":
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        metrics = {}
        if self.validation_loss:
            metrics.update(
                super().evaluation_loop(dataloader, description, True, ignore_keys, metric_key_prefix).metrics
            )
        scores = self.generation_validation(self.model, self.accelerator, self.state.global_step)
        metrics.update({f"{metric_key_prefix}_{name}": value for name, value in scores.items()})
        return EvalLoopOutput(
            predictions=None, label_ids=None, metrics=metrics, num_samples=len(self.generation_validation.dataset)
        )

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        """Private, but the one place every checkpoint is written: a LoRA run's other trained parts go there too."""
        super()._save(output_dir, state_dict)
        if not is_peft_model(self.model) or not self.args.should_save:
            return
        # peft saves only the adapters; the other parts this stage trains go next to them.
        names = [n for n, p in self.model.named_parameters() if p.requires_grad and part_of(n) != LORA_PART]
        if names:
            source = self.model.state_dict() if state_dict is None else state_dict
            tensors = {name: source[name].detach().cpu().contiguous() for name in names}
            save_file(tensors, os.path.join(output_dir or self.args.output_dir, TRAINED_PARTS_FILE), {"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Private, but the one place a resumed run loads weights: the Trainer's raw-key load matches none of an rscc
        checkpoint's (Hub-layout) keys and would keep the current weights, and it knows nothing of trained parts."""
        model = self.model if model is None else model
        if is_peft_model(model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            load_trained_parts(model, resume_from_checkpoint)
        else:
            load_saved_weights(model, resume_from_checkpoint)

    def _load_best_model(self):
        """Private, but the one place the best checkpoint is reloaded; the same reasons as `_load_from_checkpoint`."""
        if self.is_deepspeed_enabled or is_peft_model(self.model):
            # DeepSpeed reloads its own engine checkpoint; peft reloads the adapter.
            super()._load_best_model()
            if is_peft_model(self.model):
                load_trained_parts(self.model, self.state.best_model_checkpoint)
        else:
            logger.info(f"Loading the best model from {self.state.best_model_checkpoint} ({self.state.best_metric})")
            load_saved_weights(self.model, self.state.best_model_checkpoint)


def load_saved_weights(model: torch.nn.Module, folder) -> None:
    """Load the weights of a checkpoint folder written by `save_pretrained` into `model`, in place.

    rscc checkpoints are written in LLaVA-OneVision's Hub key layout and renamed on load by `from_pretrained`; the
    Trainer's own reload reads raw keys, which match no parameter (it would silently keep the current weights).
    """
    saved = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict(), strict=True)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
