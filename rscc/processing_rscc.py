"""Multi-temporal processor for rscc: (before, after) image pairs, or series of N >= 2 dates, and prompts in, model
inputs out.

Output feeds both `RsccForConditionalGeneration` and the stock `LlavaOnevisionForConditionalGeneration`: each
sample holds two or more images, so LLaVA-OneVision uses the base view of each (no tiling) and, under the default
`pair_encoding="images"`, every image placeholder stands for `num_image_tokens + 1` tokens (grid plus one newline
token; 730 for SigLIP at 384 px); the video encodings lay their tokens out as
[`RsccProcessor.placeholder_token_counts`] says. Optional change masks (one per sample, first to last date) come out
as class ids at the vision input size, for rscc models only.

[`RsccImageProcessor`] (`image_processing_rscc.py`) owns everything about pixels: decoding image inputs (16-bit
stretch), decoding change masks into the change head's classes, and reading the head's logits back as masks;
[`RsccProcessor`] pairs it with the tokenizer and the prompt.
"""

import math
import re

import torch
from transformers import AutoTokenizer, LlavaOnevisionConfig
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .configuration_rscc import IGNORE_INDEX, PAIR_ENCODINGS, VISUAL_TOKEN_SEGMENTS
from .errors_rscc import InputFileNotFoundError, RsccInputError
from .image_processing_rscc import (
    RsccImageProcessor,
    load_change_mask,
    load_image,
    pillow_truncates,
    stretch_to_uint8,
)

logger = logging.get_logger(__name__)

# CCExpert's prompt: two image placeholders, then the question.
DEFAULT_PROMPT = (
    "This is the Image1 <image>. This is the second Image2 <image>.\nWhat difference happened from Image1 to Image2?"
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# The default prompt for each `visual_tokens` setting: one placeholder per segment the language model sees.
DEFAULT_PROMPTS = {
    "pair": DEFAULT_PROMPT,
    "change": "These are the changes from Image1 to Image2 <image>.\nWhat difference happened from Image1 to Image2?",
    "pair+change": "This is the Image1 <image>. This is the second Image2 <image>. These are the changes <image>.\n"
    "What difference happened from Image1 to Image2?",
}
# The default prompt of a series of N > 2 dates: one numbered placeholder per date, oldest first.
SERIES_PROMPT_TEMPLATE = (
    "These are images of the same place at {num_dates} dates, oldest first: {images}.\n"
    "What changed across the series from Image1 to Image{num_dates}?"
)
# Qwen ChatML with the default system message (the text LLaVA-OneVision's Qwen2 was tuned on): the processor's chat
# template, through which every prompt becomes the model's input text.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def default_prompt(num_dates: int, image_token: str = "<image>") -> str:
    """The default prompt of a sample of `num_dates` images: CCExpert's for a pair, else [`SERIES_PROMPT_TEMPLATE`]."""
    if num_dates == 2:
        return DEFAULT_PROMPT.replace("<image>", image_token)
    images = ", ".join(f"Image{date} {image_token}" for date in range(1, num_dates + 1))
    return SERIES_PROMPT_TEMPLATE.format(num_dates=num_dates, images=images)


def to_sentence_case(caption: str) -> str:
    """Format a caption as a training target: whitespace collapsed, first letter upper case, one final period.

    This is CCExpert's target format. `" the road is built . "` becomes `"The road is built."`.
    """
    text = " ".join(caption.split())
    text = re.sub(r"\s+([.,;:!?])", r"\1", text).rstrip(".").rstrip()
    if not text:
        raise RsccInputError(f"caption {caption!r} is empty after normalisation")
    return text[0].upper() + text[1:] + "."


class RsccProcessor(ProcessorMixin):
    r"""
    Processor for change captioning: an [`RsccImageProcessor`] and a Qwen2 tokenizer.

    Args:
        image_processor ([`RsccImageProcessor`]): decodes and resizes each image to the vision tower's size, and the
            change masks. A LLaVA-OneVision image processor (as processor folders saved before rscc had its own hold)
            is taken over with its settings.
        tokenizer ([`Qwen2Tokenizer`]): must know the `image_token` and the conversation's special tokens.
        num_image_tokens (`int`): vision tokens per image before the newline token (729 for SigLIP-384).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"full"`): as in the model config;
            `"default"` drops one token per image.
        prompt (`str`, *optional*): default user prompt of a pair, with one `image_token` placeholder per segment of
            `visual_tokens` (two by default: before, after); defaults to `DEFAULT_PROMPTS[visual_tokens]`. A series
            of N > 2 dates gets [`default_prompt`] (N placeholders) by default.
        turn_end (`str`, *optional*, defaults to `"<|im_end|>"`): appended to caption targets; supervised.
        image_token (`str`, *optional*, defaults to `"<image>"`).
        num_change_classes (`int`, *optional*): the image processor's `num_change_classes`, as processor folders
            saved before rscc had its own image processor hold it.
        chat_template (`str`, *optional*, defaults to `DEFAULT_CHAT_TEMPLATE`): the Jinja chat template that turns
            each prompt (one user turn, text content) into the model's input text, generation prompt included.
            Processor folders saved with the former `conversation_template` (text with one `{prompt}` field) load with
            the same text.
        visual_tokens (`str`, *optional*, defaults to `"pair"`): the model's `visual_tokens`: which segments (before,
            after, change) each pair shows the language model, each `num_image_tokens + 1` placeholders in place of
            one `image_token` of the prompt.
        pair_encoding (`str`, *optional*, defaults to `"images"`): the model's `pair_encoding`, which decides how many
            tokens each image placeholder stands for (see [`RsccProcessor.placeholder_token_counts`]).
        video_tubelet_size (`int`, *optional*, defaults to 1): frames per tubelet of the video encoder under
            `pair_encoding="video_encoder"`, whose `num_image_tokens` are the tokens of one tubelet.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens: int = 729,
        vision_feature_select_strategy: str = "full",
        prompt: str | None = None,
        turn_end: str = "<|im_end|>",
        image_token: str = "<image>",
        num_change_classes: int | None = None,
        chat_template=None,
        visual_tokens: str = "pair",
        pair_encoding: str = "images",
        video_tubelet_size: int = 1,
        **kwargs,
    ):
        settings = {} if num_change_classes is None else {"num_change_classes": num_change_classes}
        if settings or not isinstance(image_processor, RsccImageProcessor):
            image_processor = RsccImageProcessor.from_image_processor(image_processor, **settings)
        if visual_tokens not in VISUAL_TOKEN_SEGMENTS:
            raise RsccInputError(f"visual_tokens={visual_tokens!r}: expected one of {list(VISUAL_TOKEN_SEGMENTS)}")
        self.num_image_tokens = num_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.visual_tokens = visual_tokens
        self.prompt = DEFAULT_PROMPTS[visual_tokens] if prompt is None else prompt
        self.turn_end = turn_end
        self.image_token = image_token
        self.pair_encoding = pair_encoding
        self.video_tubelet_size = video_tubelet_size
        if pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding={pair_encoding!r}: expected one of {list(PAIR_ENCODINGS)}")
        if pair_encoding != "images" and vision_feature_select_strategy != "full":
            raise ValueError(
                f"vision_feature_select_strategy={vision_feature_select_strategy!r} with pair_encoding="
                f"{pair_encoding!r}: video encodings keep the full token grid; use 'full'"
            )
        if visual_tokens != "pair" and pair_encoding != "images":
            raise ValueError(
                f"visual_tokens={visual_tokens!r} with pair_encoding={pair_encoding!r}: change tokens are made on each "
                "image's SigLIP grid; use pair_encoding='images'"
            )
        if video_tubelet_size < 1 or (pair_encoding != "video_encoder" and video_tubelet_size != 1):
            raise ValueError(
                f"video_tubelet_size={video_tubelet_size}: expected 1, or the encoder's tubelet size under "
                "pair_encoding='video_encoder'"
            )
        legacy_template = kwargs.pop("conversation_template", None)
        if chat_template is None and legacy_template is not None:
            chat_template = legacy_template.replace("{prompt}", "{{ messages[-1]['content'] }}")
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or tokenizer.convert_ids_to_tokens(self.image_token_id) != image_token:
            raise ValueError(f"the tokenizer has no single token for image_token {image_token!r}")
        if self.conversation_text("\x00").count("\x00") != 1:
            raise ValueError("chat_template must place the user's prompt exactly once")
        self._check_prompt(self.prompt, "prompt", 2)

    def conversation_text(self, prompt: str) -> str:
        """The model's input text for a user `prompt`: the chat template applied to one user turn, up to where the
        assistant's answer starts."""
        return self.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    def set_visual_tokens(self, visual_tokens: str) -> None:
        """Switch to a model's `visual_tokens`: the default prompt of the old setting becomes the new setting's; any
        other prompt must already hold the new setting's placeholder count."""
        if visual_tokens not in VISUAL_TOKEN_SEGMENTS:
            raise RsccInputError(f"visual_tokens={visual_tokens!r}: expected one of {list(VISUAL_TOKEN_SEGMENTS)}")
        prompt = DEFAULT_PROMPTS[visual_tokens] if self.prompt == DEFAULT_PROMPTS[self.visual_tokens] else self.prompt
        self._check_prompt(prompt, "prompt", 2, visual_tokens)
        self.visual_tokens, self.prompt = visual_tokens, prompt

    @property
    def num_change_classes(self) -> int:
        """Classes that change masks are decoded into: the image processor's setting."""
        return self.image_processor.num_change_classes

    @num_change_classes.setter
    def num_change_classes(self, value: int) -> None:
        self.image_processor.num_change_classes = value

    @property
    def tokens_per_image(self) -> int:
        """Placeholder tokens each image expands to under `pair_encoding="images"` (grid tokens plus the newline
        token)."""
        return self.num_image_tokens + 1 - (self.vision_feature_select_strategy == "default")

    def placeholder_token_counts(self, num_dates: int = 2) -> list[int]:
        """How many tokens each image placeholder of a prompt expands to, in prompt order.

        `"images"`: each image's grid and newline token. `"llava_video"`: each frame's pooled grid (`ceil(side / 2)`
        squared), the last one plus the pair's newline token (2 x 196 + 1 = 393 at 384 px, as LLaVA-OneVision counts a
        2-frame video). `"video_encoder"`: the tokens of a tubelet at the placeholder of its last frame (none at the
        others), the last one plus the newline token. The language model sees each date's tokens where its
        placeholder stands, in the order the model computes them.
        """
        if self.visual_tokens != "pair":
            return [self.tokens_per_image] * len(VISUAL_TOKEN_SEGMENTS[self.visual_tokens])
        if self.pair_encoding == "images":
            return [self.tokens_per_image] * num_dates
        if self.pair_encoding == "llava_video":
            counts = [math.ceil(math.isqrt(self.num_image_tokens) / 2) ** 2] * num_dates
        else:
            tubelet = self.video_tubelet_size
            counts = [self.num_image_tokens if (date + 1) % tubelet == 0 else 0 for date in range(num_dates)]
        counts[-1] += 1
        return counts

    @classmethod
    def from_llava_onevision(
        cls, pretrained_model_name_or_path: str, image_processor_options: dict | None = None, **kwargs
    ) -> "RsccProcessor":
        """Build the processor from a LLaVA-OneVision checkpoint's image processor, tokenizer and config.

        Args:
            pretrained_model_name_or_path (`str`): Hub id or folder of a `llava_onevision` checkpoint.
            image_processor_options (`dict`, *optional*): settings that replace the checkpoint image processor's
                (`size`, `image_mean`, ...), e.g. a video encoder's frame size (`rscc.video_rscc.processor_options`).
            **kwargs: [`RsccProcessor`] options (`prompt`, `chat_template`, `pair_encoding`, ...).
        """
        config = LlavaOnevisionConfig.from_pretrained(pretrained_model_name_or_path)
        grid = config.vision_config.image_size // config.vision_config.patch_size
        kwargs.setdefault("num_image_tokens", grid * grid)
        kwargs.setdefault("vision_feature_select_strategy", config.vision_feature_select_strategy)
        return cls(
            image_processor=RsccImageProcessor.from_pretrained(
                pretrained_model_name_or_path, **(image_processor_options or {})
            ),
            tokenizer=AutoTokenizer.from_pretrained(pretrained_model_name_or_path),
            **kwargs,
        )

    def _check_prompt(self, prompt, name: str, num_dates: int, visual_tokens: str | None = None) -> None:
        """Check that a prompt has one placeholder per date of its sample (`visual_tokens="pair"`) or per segment of
        a pair (the other settings, which take pairs only)."""
        if not isinstance(prompt, str):
            raise RsccInputError(f"{name}: expected a string, got {type(prompt).__name__}")
        visual_tokens = visual_tokens or self.visual_tokens
        if visual_tokens != "pair" and num_dates != 2:
            raise RsccInputError(
                f"{name}: a sample of {num_dates} dates, but visual_tokens={visual_tokens!r} takes (before, after) "
                "pairs only"
            )
        found = prompt.count(self.image_token)
        if visual_tokens == "pair":
            expected, roles = num_dates, "before, after" if num_dates == 2 else "one per date, oldest first"
        else:
            expected, roles = len(VISUAL_TOKEN_SEGMENTS[visual_tokens]), ", ".join(VISUAL_TOKEN_SEGMENTS[visual_tokens])
        if found != expected:
            count = NUMBER_WORDS[expected] if expected < len(NUMBER_WORDS) else str(expected)
            raise RsccInputError(
                f"{name} must contain exactly {count} {self.image_token!r} placeholder{'s' * (expected > 1)} "
                f"({roles}) for visual_tokens={visual_tokens!r}; found {found} in {prompt!r}"
            )

    @staticmethod
    def _check_samples(images) -> list:
        expected = (
            "images must be a list of samples, each an ordered list of at least 2 co-registered images (a [before, "
            "after] pair or a time series), e.g. images=[[before, after], ...]"
        )
        if not isinstance(images, (list, tuple)) or not images:
            raise RsccInputError(f"{expected}; got {type(images).__name__ if images is not None else None}")
        for index, sample in enumerate(images):
            if not isinstance(sample, (list, tuple)):
                raise RsccInputError(f"{expected}; element {index} is a {type(sample).__name__}, not a list")
            if len(sample) < 2:
                raise RsccInputError(f"{expected}; element {index} holds {len(sample)} image(s)")
        return [list(sample) for sample in images]

    def _per_sample(self, values, num_samples: int, name: str) -> list:
        if isinstance(values, str):
            # One prompt serves every sample; one caption can only belong to one sample.
            values = [values] * num_samples if name == "text" else [values]
        if not isinstance(values, (list, tuple)) or len(values) != num_samples:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise RsccInputError(f"{name}: expected one entry per sample ({num_samples}), got {got}")
        return list(values)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(
        self,
        images=None,
        text=None,
        captions=None,
        change_masks=None,
        padding_side: str | None = None,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Prepare pairs, or series of N >= 2 dates, for the model.

        Args:
            images (`list` of samples): each sample an ordered list of N >= 2 co-registered images, oldest first (a
                `[before, after]` pair is N = 2); samples of one batch may differ in N. Each image a path, PIL image,
                numpy array or tensor (see [`load_image`]). Images of any size are resized to the vision tower's
                input size.
            text (`str` or `list[str]`, *optional*): user prompt per sample (one string applies to all), each with
                one image placeholder per date (per segment of `visual_tokens` for its other settings); defaults to
                `self.prompt` for pairs and [`default_prompt`] for series.
            captions (`list[str]`, *optional*): target caption per sample, for training. Targets are formatted with
                [`to_sentence_case`] and followed by `turn_end`; `labels` supervise only those tokens.
            change_masks (`list`, *optional*): one change mask per sample (first to last date), or `None` for a sample
                without one: a PNG path, PIL image, array or tensor in any encoding [`load_change_mask`] documents.
                Masks are resized (nearest) to the vision input size like the images; a mask whose size differs from
                its images' is resized with a warning.
            padding_side (`str`, *optional*): `"left"` (default without captions: generation) or `"right"`
                (default with captions: training).
            return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"` is supported.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` `(batch, seq_len)`, `pixel_values`
            `(num_images, 1, 3, H, W)` (every sample's images in turn), `image_sizes` `(num_images, 2)`,
            `batch_num_images` `(batch,)` (each sample's N), with captions `labels` `(batch, seq_len)`, and with change
            masks `change_masks` `(batch, H, W)` (class ids, -100 for every pixel of a sample given `None`).
        """
        if return_tensors != "pt":
            raise RsccInputError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        samples = self._check_samples(images)
        num_dates = [len(sample) for sample in samples]
        if text is None:
            prompts = [self.prompt if n == 2 else default_prompt(n, self.image_token) for n in num_dates]
        else:
            prompts = self._per_sample(text, len(samples), "text")
        for index, prompt in enumerate(prompts):
            self._check_prompt(prompt, f"text[{index}]", num_dates[index])
        targets = None
        if captions is not None:
            targets = [to_sentence_case(c) for c in self._per_sample(captions, len(samples), "captions")]
        padding_side = padding_side or ("left" if targets is None else "right")
        if padding_side not in ("left", "right"):
            raise RsccInputError(f"padding_side={padding_side!r}: expected 'left' or 'right'")

        masks = None if change_masks is None else self._per_sample(change_masks, len(samples), "change_masks")
        image_inputs = self.image_processor(samples, change_masks=masks, return_tensors="pt", **kwargs)

        sequences, label_sequences = [], []
        for index, prompt in enumerate(prompts):
            prompt_ids, counts = [], iter(self.placeholder_token_counts(num_dates[index]))
            for token_id in self._encode(self.conversation_text(prompt)):
                prompt_ids.extend([token_id] * (next(counts) if token_id == self.image_token_id else 1))
            target_ids = [] if targets is None else self._encode(targets[index] + self.turn_end)
            if self.image_token_id in target_ids:
                raise RsccInputError(f"captions[{index}] contains the image token {self.image_token!r}")
            sequences.append(prompt_ids + target_ids)
            label_sequences.append([IGNORE_INDEX] * len(prompt_ids) + target_ids)

        longest = max(len(ids) for ids in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def pad(ids, value):
            filler = [value] * (longest - len(ids))
            return filler + ids if padding_side == "left" else ids + filler

        data = {
            "input_ids": torch.tensor([pad(ids, pad_id) for ids in sequences], dtype=torch.long),
            "attention_mask": torch.tensor([pad([1] * len(ids), 0) for ids in sequences], dtype=torch.long),
            "pixel_values": image_inputs["pixel_values"],
            "image_sizes": image_inputs["image_sizes"],
            "batch_num_images": torch.tensor(num_dates, dtype=torch.long),
        }
        if targets is not None:
            data["labels"] = torch.tensor([pad(ids, IGNORE_INDEX) for ids in label_sequences], dtype=torch.long)
        if masks is not None:
            data["change_masks"] = image_inputs["change_masks"]
        return BatchFeature(data=data)

    def post_process_change_masks(self, change_logits: torch.Tensor, target_sizes=None) -> list[dict]:
        """The change head's masks per pair: see [`RsccImageProcessor.post_process_change_masks`]."""
        return self.image_processor.post_process_change_masks(change_logits, target_sizes=target_sizes)

    def post_process_captions(self, generated_ids: torch.Tensor, inputs=None) -> list[str]:
        """Clean caption strings from `generate` output.

        Args:
            generated_ids (`torch.Tensor` of shape `(batch, seq_len)`): `model.generate(**inputs)` output.
            inputs (*optional*): the processor output given to `generate`; its prompt tokens are removed first.
                Without it, `generated_ids` must hold only new tokens.

        Returns:
            `list[str]`, one caption per pair, without special tokens and surrounding whitespace.
        """
        if inputs is not None:
            prompt_ids = inputs["input_ids"]
            matches = generated_ids.shape[0] == prompt_ids.shape[0] and generated_ids.shape[1] >= prompt_ids.shape[1]
            if not matches or not torch.equal(generated_ids[:, : prompt_ids.shape[1]].cpu(), prompt_ids.cpu()):
                raise RsccInputError(
                    f"post_process_captions: generated_ids {tuple(generated_ids.shape)} do not start with the prompts "
                    f"of inputs {tuple(prompt_ids.shape)}; pass the inputs that generate was called with"
                )
            generated_ids = generated_ids[:, prompt_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(generated_ids, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images", "change_masks"]


RsccProcessor.register_for_auto_class()

__all__ = [
    "RsccProcessor",
    "RsccImageProcessor",
    "RsccInputError",
    "InputFileNotFoundError",
    "load_image",
    "load_change_mask",
    "default_prompt",
    "to_sentence_case",
    "stretch_to_uint8",
    "pillow_truncates",
]
