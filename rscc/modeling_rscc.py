"""rscc models: LLaVA-OneVision with CCExpert's difference-aware integration of the two images of a pair (or KCFI's
key change features), an MV-CC change-mask token filter, a change-detection head and Semantic-CC's bi-temporal filter
inside the vision tower (KCFI's and Semantic-CC's modules in `change_features_rscc.py`).

The stock LLaVA-OneVision parameter names are kept, so a LLaVA-OneVision checkpoint loads unchanged; the new
modules live under `NEW_MODULE_PREFIXES`. The difference module and the bi-temporal filters enter through
zero-initialised scales and the head only acts through the filter, so a freshly built model that shows the language
model the two images (`visual_tokens="pair"`) computes exactly what the stock model computes until training moves
those scales or a mask filters the tokens.
"""

import math

import torch
from torch import nn
from transformers import (
    AutoModel,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    PreTrainedConfig,
)
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionMultiModalProjector,
    LlavaOnevisionPreTrainedModel,
)
from transformers.utils.generic import can_return_tuple

from .change_features_rscc import (
    RsccBitemporalFilter,
    RsccChangeProjector,
    RsccKeyChangePerceiver,
    bitemporal_filters_in,
    project_segments,
)
from .change_head_rscc import RsccChangeHead, change_detection_loss, full_resolution_logits
from .compat_rscc import given_cache
from .configuration_rscc import IGNORE_INDEX, RsccConfig
from .difference_integration_rscc import RsccDifferenceIntegration
from .errors_rscc import RsccInputError
from .llava_onevision_checkpoints_rscc import (
    HUB_OPTIONS,
    load_pretrained_video_encoder,
    new_parameters_report,
    rscc_config_from_llava_onevision,
)
from .outputs_rscc import RsccCausalLMOutputWithPast, RsccImageFeaturesOutput, RsccModelOutputWithPast
from .series_inputs_rscc import check_pairs_only_options, checked_series_inputs
from .token_filter_rscc import RsccTokenFilter
from .video_rscc import RsccVideoChangeHead, RsccVideoEncoder



def first_predicting_position(labels: torch.Tensor) -> int:
    """Index of the first position whose next-token target is supervised in any row of `labels` (the causal shift:
    position i predicts label i + 1); `labels.shape[1] - 1` when nothing is supervised (a one-position window)."""
    supervised = (labels[:, 1:] != IGNORE_INDEX).any(0)
    return int(supervised.float().argmax()) if bool(supervised.any()) else labels.shape[1] - 1


class RsccPreTrainedModel(LlavaOnevisionPreTrainedModel):
    config: RsccConfig
    config_class = RsccConfig
    _no_split_modules = ["SiglipEncoderLayer", "Qwen2DecoderLayer", "RsccChangeAwareBlock", "RsccChangeHead"]
    # Pair validation reads `batch_num_images` on the host.
    _can_compile_fullgraph = False

    @classmethod
    def is_custom_code(cls) -> bool:
        """`False`: rscc initialises its weights through `transformers.initialization`, as transformers' own models do.

        transformers initialises the missing weights of models defined elsewhere with a shortcut that treats a module
        without parameters of its own as initialised; SigLIP initialises its attention and MLP layers at that level,
        so `from_pretrained` without vision weights would give SigLIP other weights than `__init__` does.
        """
        return False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, with `auto_map` entries so the folder loads with `trust_remote_code=True`.

        A class registers for one Auto class only, so `AutoModel` is added here; it maps to the captioning model.
        """
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": f"modeling_rscc.{RsccForConditionalGeneration.__name__}",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RsccDifferenceIntegration):
            init.normal_(module.role_embedding, mean=0.0, std=self.config.get_text_config().initializer_range)
            init.zeros_(module.output_scale)
        if isinstance(module, RsccBitemporalFilter):
            init.zeros_(module.output_scale)


class RsccModel(RsccPreTrainedModel, LlavaOnevisionModel):
    """[`LlavaOnevisionModel`] for (before, after) pairs: difference integration of the two images' features, a
    change-detection head, and a change-mask filter of the vision tokens the language model sees.

    Every sample holds at least two co-registered images, oldest first: a (before, after) pair or a series of dates
    (`batch_num_images` each >= 2, samples of a batch may differ). The difference module compares consecutive dates
    and first to last; the change head and the change masks describe first to last. Change tokens
    (`visual_tokens` other than `"pair"`), key change features and the bi-temporal filter take pairs only.
    """

    def __init__(self, config: RsccConfig):
        # LlavaOnevisionModel's constructor always builds SigLIP and its projector: its modules are built here instead
        # (same names and initialisation), SigLIP only where it runs.
        super(LlavaOnevisionModel, self).__init__(config)
        self.vision_tower = self.multi_modal_projector = self.video_encoder = None
        if config.pair_encoding == "video_encoder":
            # MV-CC: the video encoder and its own projector replace SigLIP and LLaVA-OneVision's projector.
            self.video_encoder = RsccVideoEncoder(config)
        else:
            self.vision_tower = AutoModel.from_config(config.vision_config)
            self.multi_modal_projector = LlavaOnevisionMultiModalProjector(config)
        embed_std = 1 / math.sqrt(config.text_config.hidden_size)
        self.image_newline = nn.Parameter(torch.randn(config.text_config.hidden_size, dtype=self.dtype) * embed_std)
        self.vocab_size = config.text_config.vocab_size
        self.language_model = AutoModel.from_config(config.text_config)
        self.token_filter = RsccTokenFilter(config)
        change_features = config.change_features
        self.difference_module = (
            RsccDifferenceIntegration(config) if change_features == "difference_integration" else None
        )
        self.key_change_perceiver = RsccKeyChangePerceiver(config) if change_features == "key_change" else None
        self.change_projector = RsccChangeProjector(config) if "change" in config.visual_segments else None
        head = RsccVideoChangeHead if self.video_encoder is not None else RsccChangeHead
        self.change_head = head(config) if config.use_change_head else None
        self.bitemporal_filter = bitemporal_filters_in(self.vision_tower, config)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        change_masks: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(num_images, num_patches, channels, height, width)` or
                `(num_images, channels, height, width)`): the images of every sample in turn, oldest first (before
                then after for a pair). Only the base view (`[:, 0]`) is used, as LLaVA-OneVision does for
                multi-image samples.
            image_sizes (`torch.Tensor` of shape `(num_images, 2)`): original (height, width) of each image.
            batch_num_images (`torch.LongTensor` of shape `(batch_size,)`): images (dates) per sample, each at least
                2 (exactly the video encoder's frames per clip, `config.video_num_frames`, under
                `pair_encoding="video_encoder"`).
            change_masks (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*): class ids per sample
                (first to last date) at any resolution (0 no change), `IGNORE_INDEX` where unlabelled; from
                `RsccProcessor(change_masks=...)`.

        Returns:
            [`RsccImageFeaturesOutput`] whose `pooler_output` is a list of `(num_tokens + 1, text_hidden)` tensors,
            one per image (grid tokens then the newline token), one per segment of `config.visual_segments` of each
            pair, or, under a video `config.pair_encoding`, one per sample (every frame's tokens then one newline
            token), with the head's first-to-last `change_logits` and, under `change_filter="drop"`, the
            `kept_tokens`. A model with none of the rscc modules and `pair_encoding="images"` returns
            LLaVA-OneVision's output unchanged.
        """
        config = self.config
        if config.pair_encoding == "video_encoder":
            return self._video_encoder_features(pixel_values, batch_num_images, change_masks)
        if self._computes_stock_features():
            return super().get_image_features(
                pixel_values,
                image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                vision_aspect_ratio=vision_aspect_ratio,
                batch_num_images=batch_num_images,
                return_dict=True,
                **kwargs,
            )
        return self._siglip_pair_features(
            pixel_values,
            image_sizes,
            config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer,
            vision_feature_select_strategy or config.vision_feature_select_strategy,
            vision_aspect_ratio or config.vision_aspect_ratio,
            batch_num_images,
            change_masks,
            **kwargs,
        )

    def _computes_stock_features(self) -> bool:
        """Whether the image features are LLaVA-OneVision's own: SigLIP per image and none of rscc's modules."""
        rscc_modules = (self.difference_module, self.key_change_perceiver, self.change_head, self.bitemporal_filter)
        return (
            self.config.pair_encoding == "images"
            and self.config.change_filter == "none"
            and all(module is None for module in rscc_modules)
        )

    def _siglip_pair_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int],
        vision_feature_select_strategy: str,
        vision_aspect_ratio: str,
        batch_num_images: torch.LongTensor | None,
        change_masks: torch.Tensor | None,
        **kwargs,
    ) -> RsccImageFeaturesOutput:
        """`get_image_features` through SigLIP with rscc's modules: the change features, head and filter on the dates
        of each sample, then the projected segments with their newline tokens."""
        config = self.config
        pixel_values, change_masks, num_dates = checked_series_inputs(pixel_values, batch_num_images, change_masks)
        check_pairs_only_options(config, num_dates)
        levels = config.difference_feature_layers if config.change_features != "none" else []
        vision_outputs, features, level_features = self._vision_features(
            pixel_values, vision_feature_layer, levels, vision_feature_select_strategy, **kwargs
        )
        last = num_dates.cumsum(0) - 1
        first = last - num_dates + 1
        change = None
        if self.key_change_perceiver is not None:
            change = self.key_change_perceiver(
                [level[first] for level in level_features], [level[last] for level in level_features]
            )
        grid_logits = (
            self.change_head(features[first], features[last], change) if self.change_head is not None else None
        )
        changed_tokens = self.token_filter.changed_tokens(change_masks, grid_logits)
        kept_grid_tokens = self.token_filter.kept_grid_tokens(changed_tokens)
        if self.difference_module is not None:
            # Under "llava_video" the filter's grid is the pooled one, so the module refines every token.
            features, change = self.difference_module.integrate_series(
                level_features,
                features,
                num_dates,
                changed_tokens,
                kept_grid_tokens if config.pair_encoding == "images" else None,
                with_change="change" in config.visual_segments,
            )
        if config.visual_tokens == "pair":
            projected, grid_sizes, grids_per_sample = self.multi_modal_projector(features), image_sizes, num_dates
        else:
            projected, grid_sizes = project_segments(
                config.visual_segments,
                self.multi_modal_projector,
                self.change_projector,
                (features[first], features[last], change),
                image_sizes,
            )
            grids_per_sample = torch.full_like(num_dates, len(config.visual_segments))
        if config.pair_encoding == "llava_video":
            projected = self.apply_pooling(projected)
        projected, kept_tokens = self.token_filter.apply(projected, grids_per_sample, changed_tokens, kept_grid_tokens)
        return RsccImageFeaturesOutput(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=self._with_newline_tokens(projected, num_dates, grid_sizes, vision_aspect_ratio),
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            change_logits=full_resolution_logits(grid_logits, pixel_values),
            kept_tokens=kept_tokens,
            entries_per_sample=grids_per_sample.tolist() if config.pair_encoding == "images" else [1] * len(num_dates),
        )

    def _vision_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int],
        levels: list[int],
        vision_feature_select_strategy: str,
        **kwargs,
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor, list[torch.Tensor]]:
        """SigLIP's outputs, the features the projector reads (the layers of `vision_feature_layer` concatenated when
        it lists several, as in LLaVA-OneVision), and the hidden states of the change-feature `levels`."""
        feature_layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
        kwargs["output_hidden_states"] = kwargs.get("output_hidden_states") or sorted({*feature_layers, *levels})
        vision_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        first_token = 1 if vision_feature_select_strategy == "default" else 0

        def select(layer):  # only the requested layers are recorded
            return vision_outputs.hidden_states[layer][:, first_token:]

        features = torch.cat([select(layer) for layer in feature_layers], dim=-1) if len(feature_layers) > 1 else (
            select(feature_layers[0])
        )
        return vision_outputs, features, [select(layer) for layer in levels]

    def _with_newline_tokens(
        self, projected: torch.Tensor, num_dates: torch.LongTensor, grid_sizes: torch.Tensor, vision_aspect_ratio: str
    ) -> list[torch.Tensor]:
        """The language model's entries from the projected grids: each grid then its newline token, or under
        `"llava_video"` (LLaVA-OneVision's video layout) every frame's pooled grid of a sample then one newline."""
        if self.config.pair_encoding == "llava_video":
            newline = self.image_newline[None].to(projected.dtype)
            return [torch.cat([*frames, newline]) for frames in projected.split(num_dates.tolist())]
        image_features, _ = self.pack_image_features(
            [image[None] for image in projected],
            grid_sizes,
            image_newline=self.image_newline,
            vision_aspect_ratio=vision_aspect_ratio,
        )
        return image_features

    def _video_encoder_features(
        self, pixel_values: torch.Tensor, batch_num_images: torch.LongTensor | None, change_masks: torch.Tensor | None
    ) -> RsccImageFeaturesOutput:
        """`get_image_features` under `pair_encoding="video_encoder"`: every sample's frames through the video encoder
        at once; per sample, the projected tokens of every temporal step, then one newline token."""
        pixel_values, change_masks, num_dates = checked_series_inputs(
            pixel_values, batch_num_images, change_masks
        )
        num_samples = len(num_dates)
        tokens = self.video_encoder.encode_samples(pixel_values, num_dates)
        grid_logits = self.change_head(tokens) if self.change_head is not None else None
        changed_tokens = self.token_filter.changed_tokens(change_masks, grid_logits)
        kept_grid_tokens = self.token_filter.kept_grid_tokens(changed_tokens)
        projected = self.video_encoder.projector(tokens)
        num_steps = torch.full_like(num_dates, projected.shape[1])
        projected, kept_tokens = self.token_filter.apply(
            projected.flatten(0, 1), num_steps, changed_tokens, kept_grid_tokens
        )
        newline = self.image_newline[None].to(projected.dtype)
        steps = projected.view(num_samples, -1, projected.shape[-1])
        return RsccImageFeaturesOutput(
            last_hidden_state=tokens.flatten(1, 2),
            pooler_output=[torch.cat([sample, newline]) for sample in steps],
            change_logits=full_resolution_logits(grid_logits, pixel_values),
            kept_tokens=kept_tokens,
            entries_per_sample=[1] * num_samples,
        )

    def prepare_language_model_inputs(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        change_masks: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> dict:
        r"""
        Encode the images (unless `mm_encoder_outputs` holds them) and, under `change_filter="drop"`, shorten the
        sequence to the tokens the filter keeps ([`RsccTokenFilter.pack`]): the one place where rscc's inputs become an
        ordinary LLaVA-OneVision input. Embeddings, positions (contiguous: the language model's default) and the cache
        of `generate` all follow from that shorter sequence, as for any prompt.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`): with one placeholder per vision token.
            attention_mask (`torch.Tensor` of shape `(batch_size, seq_len)`, *optional*).
            pixel_values, image_sizes, batch_num_images, change_masks: as for [`RsccModel.get_image_features`].
            mm_encoder_outputs (`dict`, *optional*): already encoded modalities; an `"image"` entry with `kept_tokens`
                (from `get_image_features` under `"drop"`) is shortened like features computed here.
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*): shortened with the sequence.
            position_ids: refused under `"drop"` with features to shorten (they would describe the longer sequence).

        Returns:
            `dict` with `input_ids`, `attention_mask`, `labels`, `mm_encoder_outputs` (image features of the kept tokens
            only) and `kept_positions` (see [`RsccTokenFilter.pack`]; `None` when nothing was shortened).
        """
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if pixel_values is not None and mm_encoder_outputs.get("image") is not None:
            raise ValueError("pass either pixel_values or mm_encoder_outputs['image'], not both")
        if pixel_values is not None:
            mm_encoder_outputs["image"] = self.get_image_features(
                pixel_values,
                image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                vision_aspect_ratio=vision_aspect_ratio,
                batch_num_images=batch_num_images,
                change_masks=change_masks,
                return_dict=True,
            )
        prepared = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "mm_encoder_outputs": mm_encoder_outputs or None,
            "kept_positions": None,
        }
        image_outputs = mm_encoder_outputs.get("image")
        kept_tokens = getattr(image_outputs, "kept_tokens", None)
        if kept_tokens is None:
            return prepared
        prepared.update(self.token_filter.pack(input_ids, attention_mask, labels, kept_tokens, position_ids))
        prepared["mm_encoder_outputs"] = {**mm_encoder_outputs, "image": image_outputs.kept_only()}
        return prepared

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        change_masks: torch.Tensor | None = None,
        **kwargs,
    ) -> RsccModelOutputWithPast:
        r"""
        [`LlavaOnevisionModel.forward`] on the inputs of [`RsccModel.prepare_language_model_inputs`]: under
        `change_filter="drop"` the language model runs on the shorter sequence of the kept tokens. Every other argument
        (`cache` / `past_key_values`, `position_ids`, `inputs_embeds`, `use_cache`, ...) goes to LLaVA-OneVision as is.

        Args:
            change_masks (`torch.Tensor` of shape `(num_pairs, height, width)`, *optional*):
                Class ids per pair (see [`RsccModel.get_image_features`]).

        Raises:
            RsccInputError: given `labels`: no language-model head, no loss (stock's base model ignores them unread).
        """
        if kwargs.get("labels") is not None:
            raise RsccInputError(
                "RsccModel.forward got labels, but the base model has no language-model head and computes no loss: "
                "train RsccForConditionalGeneration (AutoModel.from_pretrained gives it) with the labels instead"
            )
        prepared = self.prepare_language_model_inputs(
            input_ids, attention_mask, pixel_values, image_sizes, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images, mm_encoder_outputs=mm_encoder_outputs, change_masks=change_masks,
            position_ids=kwargs.get("position_ids"),
        )
        outputs = super().forward(
            input_ids=prepared["input_ids"],
            attention_mask=prepared["attention_mask"],
            image_sizes=image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            mm_encoder_outputs=prepared["mm_encoder_outputs"],
            return_dict=True,
            **kwargs,
        )
        image_outputs = (prepared["mm_encoder_outputs"] or {}).get("image")
        return RsccModelOutputWithPast(
            **outputs,
            change_logits=getattr(image_outputs, "change_logits", None),
            kept_positions=prepared["kept_positions"],
        )


class RsccForConditionalGeneration(RsccPreTrainedModel, LlavaOnevisionForConditionalGeneration, GenerationMixin):
    """LLaVA-OneVision for change captioning: [`RsccModel`] plus the language-model head.

    Example:

    ```python
    >>> from rscc import RsccForConditionalGeneration, RsccProcessor

    >>> model = RsccForConditionalGeneration.from_llava_onevision("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    >>> processor = RsccProcessor.from_llava_onevision("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    >>> inputs = processor(images=[["before.png", "after.png"]], return_tensors="pt")
    >>> processor.post_process_captions(model.generate(**inputs, max_new_tokens=40), inputs)
    ```"""

    def __init__(self, config: RsccConfig):
        # LLaVA-OneVision's constructor would build a stock model: rscc's is built in its place (same parameter names).
        super(LlavaOnevisionForConditionalGeneration, self).__init__(config)
        # `PreTrainedModel.__init__` consumed the deprecated `config.gradient_checkpointing` flag; the model keeps it.
        checkpointing = self.is_activation_checkpointing
        self.model = RsccModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        if checkpointing:
            self.activation_checkpointing_enable()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        change_masks: torch.Tensor | None = None,
        labelled_logits_only: bool = False,
        **kwargs,
    ) -> RsccCausalLMOutputWithPast:
        r"""
        [`LlavaOnevisionForConditionalGeneration.forward`] with the change-mask filter and the change-detection loss.
        Every argument not listed (`cache` / `past_key_values`, `position_ids`, `inputs_embeds`, `use_cache`, ...) goes
        to LLaVA-OneVision as is.

        Args:
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*): caption targets (-100 elsewhere),
                aligned with `input_ids`; under `change_filter="drop"` they are shortened with the sequence.
            change_masks (`torch.Tensor` of shape `(num_pairs, height, width)`, *optional*): class ids per pair, 0 for
                no change, `IGNORE_INDEX` (-100) where unlabelled (all of it for pairs without a mask). They feed the
                filter (see `config.change_mask_source`) and, with a change head, the change-detection loss; pairs
                without a label add no detection loss.
            labelled_logits_only (`bool`, *optional*, defaults to `False`): with `labels`, run the LM head only from
                the position before the batch's first caption target to the end, and slice `labels` alike: the loss
                is the same, without the LM head and vocabulary-wide softmax over the ~1,500 image positions (about a
                tenth of a training step's FLOPs at 0.5B). `logits` then cover those last positions only.

        Returns:
            [`RsccCausalLMOutputWithPast`]: `loss` is `caption_loss + config.change_loss_weight * change_loss` when
            both exist, and whichever exists otherwise. Weightings that need the training history (`"dwa"`) or
            rescale by the losses themselves (`"normalized"`) are applied by rscc's Trainer from `caption_loss` and
            `change_loss`.
        """
        prepared = self.model.prepare_language_model_inputs(
            input_ids,
            attention_mask,
            pixel_values,
            image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            mm_encoder_outputs=mm_encoder_outputs,
            change_masks=change_masks,
            labels=labels,
            position_ids=kwargs.get("position_ids"),
        )
        labels = prepared["labels"]
        outputs = self.model(
            input_ids=prepared["input_ids"],
            attention_mask=prepared["attention_mask"],
            image_sizes=image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images,
            mm_encoder_outputs=prepared["mm_encoder_outputs"],
            return_dict=True,
            **kwargs,
        )
        if labels is not None and labelled_logits_only:
            labels = labels[:, first_predicting_position(labels) :]
            logits_to_keep = labels.shape[1]
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))

        caption_loss = change_loss = None
        if labels is not None:
            caption_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        if outputs.change_logits is not None and change_masks is not None:
            change_loss = self.change_detection_loss(outputs.change_logits, change_masks)
        if caption_loss is None or change_loss is None:
            loss = change_loss if caption_loss is None else caption_loss
        else:
            loss = caption_loss + self.config.change_loss_weight * change_loss

        language_model_outputs = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        language_model_outputs["kept_positions"] = prepared["kept_positions"]
        return RsccCausalLMOutputWithPast(
            loss=loss, logits=logits, caption_loss=caption_loss, change_loss=change_loss, **language_model_outputs
        )

    def change_detection_loss(self, change_logits: torch.Tensor, change_masks: torch.Tensor) -> torch.Tensor | None:
        """[`change_detection_loss`] with this model's `config.change_dice_weight`."""
        return change_detection_loss(change_logits, change_masks, self.config.change_dice_weight)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, **kwargs):
        r"""
        [`GenerationMixin.generate`], with two rscc additions:

        - `input_ids` with image placeholders need their images (`pixel_values` or `mm_encoder_outputs`), unless a
          cache that already holds the prompt is given; without them the caption would come from the prompt alone.
        - Under `change_filter="drop"` the images are encoded first and generation runs on the shortened prompt of
          [`RsccModel.prepare_language_model_inputs`], so the cache, the attention mask and the positions all describe
          the sequence the language model saw, through the standard generation loop (beam search, assisted decoding,
          static caches included). The returned sequences still start with the caller's `input_ids`. To continue from
          a returned cache, pass the returned sequences with the same `pixel_values` (and `change_masks`) again.
        """
        input_ids = kwargs.pop("input_ids", inputs)
        image_outputs = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        has_images = kwargs.get("pixel_values") is not None or image_outputs is not None
        cache = given_cache(kwargs)
        cached_length = cache.get_seq_length() if cache is not None else 0
        placeholders = input_ids is not None and bool((input_ids == self.config.image_token_id).any())
        # Embeddings given by the caller already hold the images (as in stock generation).
        needs_images = placeholders and not has_images and kwargs.get("inputs_embeds") is None
        if needs_images and (cached_length == 0 or self.config.change_filter == "drop"):
            raise ValueError(
                "input_ids hold image placeholders but no pixel_values (or mm_encoder_outputs) were given: the caption "
                "would come from the prompt alone. Pass the processor's whole output"
                + (
                    ", also when continuing from a cache under change_filter='drop' (the images decide which "
                    "placeholders the cached prompt kept)"
                    if cached_length
                    else ""
                )
            )
        if self.config.change_filter != "drop" or not has_images or input_ids is None:
            return super().generate(input_ids, **kwargs)

        prepared = self.model.prepare_language_model_inputs(
            input_ids,
            kwargs.pop("attention_mask", None),
            kwargs.pop("pixel_values", None),
            kwargs.get("image_sizes"),
            vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
            vision_aspect_ratio=kwargs.get("vision_aspect_ratio"),
            batch_num_images=kwargs.get("batch_num_images"),
            mm_encoder_outputs=kwargs.pop("mm_encoder_outputs", None),
            change_masks=kwargs.pop("change_masks", None),
        )
        if prepared["mm_encoder_outputs"] is not None and not cached_length:
            # With a cache, the prompt's images are in it already.
            kwargs["mm_encoder_outputs"] = prepared["mm_encoder_outputs"]
        shortened = prepared["input_ids"]
        outputs = super().generate(shortened, attention_mask=prepared["attention_mask"], **kwargs)
        sequences = outputs if isinstance(outputs, torch.Tensor) else outputs.sequences
        repeats = sequences.shape[0] // input_ids.shape[0]
        prompt = input_ids.repeat_interleave(repeats, dim=0).to(sequences.device)
        sequences = torch.cat([prompt, sequences[:, shortened.shape[1] :]], dim=1)
        if isinstance(outputs, torch.Tensor):
            return sequences
        outputs.sequences = sequences
        return outputs

    @classmethod
    def from_llava_onevision(
        cls,
        pretrained_model_name_or_path: str,
        *,
        output_loading_info: bool = False,
        from_pretrained_kwargs: dict | None = None,
        video_encoder: str | PreTrainedConfig | dict | None = None,
        **config_overrides,
    ):
        """Build an rscc model from a LLaVA-OneVision checkpoint: base weights loaded, new modules initialised.

        Args:
            pretrained_model_name_or_path (`str`): Hub id or folder of a `llava_onevision` checkpoint.
            output_loading_info (`bool`, *optional*): also return the report of new weights.
            from_pretrained_kwargs (`dict`, *optional*): passed to `from_pretrained` (`dtype`, `device_map`,
                `revision`, `attn_implementation`, ...).
            video_encoder (`str`, `PreTrainedConfig` or `dict`, *optional*): with `pair_encoding="video_encoder"`, the
                video encoder (VideoMAE or V-JEPA 2): a Hub id or folder (its config and pretrained weights, its frames
                per clip set to 2 for pairs) or a config (random weights; its frames per clip, `num_frames` or
                V-JEPA 2's `frames_per_clip`, are the dates per sample). The checkpoint's SigLIP and projector are then
                not loaded (the encoder replaces them), and `change_features` defaults to `"none"`.
            **config_overrides: [`RsccConfig`] options, e.g. `difference_num_blocks=2`.

        Returns:
            The model, or `(model, report)` where `report` maps `new_parameters` (names), `num_new_parameters`
            and `num_loaded_parameters`.
        """
        from_pretrained_kwargs = dict(from_pretrained_kwargs or {})
        hub_kwargs = {key: from_pretrained_kwargs[key] for key in HUB_OPTIONS if key in from_pretrained_kwargs}
        config = rscc_config_from_llava_onevision(
            pretrained_model_name_or_path, video_encoder, hub_kwargs, config_overrides
        )
        model, loading_info = cls.from_pretrained(
            pretrained_model_name_or_path, config=config, output_loading_info=True, **from_pretrained_kwargs
        )
        load_pretrained_video_encoder(model, video_encoder, hub_kwargs, loading_info)
        report = new_parameters_report(model, pretrained_model_name_or_path, loading_info)
        return (model, report) if output_loading_info else model


RsccForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "RsccPreTrainedModel",
    "RsccModel",
    "RsccForConditionalGeneration",
    "RsccImageFeaturesOutput",
    "RsccModelOutputWithPast",
    "RsccCausalLMOutputWithPast",
]
