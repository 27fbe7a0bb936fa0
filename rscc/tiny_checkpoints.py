"""Offline model folders: tiny random rscc checkpoints for tests and demos, and real-size configs for benchmarks.

No weights can be downloaded here, so everything below is built from scratch: a small byte-level BPE tokenizer
with the LLaVA-OneVision special tokens, LLaVA-OneVision's image processor, and random weights.

    from rscc.tiny_checkpoints import make_tiny_checkpoint
    make_tiny_checkpoint("tiny-rscc")          # or: rscc tiny-checkpoint tiny-rscc
"""

import json
from pathlib import Path

import torch

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

from .caption_text import NO_CHANGE_SENTENCES
from .configuration_rscc import RsccConfig
from .modeling_rscc import RsccForConditionalGeneration
from .processing_rscc import DEFAULT_PROMPT, RsccImageProcessor, RsccProcessor

# The same special tokens as LLaVA-OneVision's Qwen2 tokenizer (which has them at ids 151643..151647).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
# Qwen2's pre-tokenisation, so the tiny tokenizer splits text the way the real one does.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHANGE_CAPTION_WORDS = (
    "a road is built and several houses appear along it . many buildings are constructed on the bare land . "
    "the trees are cut down and replaced by a parking lot . some villas have been built near the lake . "
    "two rows of houses appear in the top left corner . a new road goes through the green area . "
    "the vegetation disappears and the farmland is replaced by residential buildings with a swimming pool . "
    "an old building is removed at the bottom right . the river bank changes . water and grass . "
)

TINY_IMAGE_SIZE = 28
TINY_PATCH_SIZE = 4
# The CCExpert defaults assume the 26-layer, 1152-wide tower; the tiny tower has 4 layers of width 32.
TINY_DIFFERENCE_OPTIONS = {"difference_feature_layers": [1, 2, 3, 4], "difference_num_heads": 4}


def build_tiny_tokenizer(vocab_size: int = 512) -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer trained on a few change captions, with LLaVA-OneVision's special tokens.

    It encodes any text (byte fallback through the byte-level alphabet) and places `<image>` on one token.
    """
    corpus = [DEFAULT_PROMPT, *NO_CHANGE_SENTENCES, CHANGE_CAPTION_WORDS, CHANGE_CAPTION_WORDS.title()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(backend.to_str())["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in trained["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tokenizer


def tiny_config(
    tokenizer: Qwen2Tokenizer, image_size: int = TINY_IMAGE_SIZE, patch_size: int = TINY_PATCH_SIZE, **overrides
) -> RsccConfig:
    """A few-hundred-thousand-parameter RsccConfig matching `tokenizer` (7x7 vision tokens per image by default;
    `image_size=384, patch_size=14` gives the real 27x27 token grid at tiny widths)."""
    options = dict(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=2048,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[image_size * h, image_size * w] for h in (1, 2) for w in (1, 2)],
        **TINY_DIFFERENCE_OPTIONS,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    options.update(overrides)
    return RsccConfig(**options)


def llava_onevision_0_5b_config(**overrides) -> RsccConfig:
    """RsccConfig at the dimensions of `llava-hf/llava-onevision-qwen2-0.5b-ov-hf` (SigLIP-so400m-384, 26 layers,
    plus Qwen2-0.5B), for random-weight speed and memory measurements."""
    options = dict(
        text_config=dict(
            model_type="qwen2",
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=152000,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
        image_token_index=151646,
        video_token_index=151647,
    )
    options.update(overrides)
    return RsccConfig(**options)


def build_image_processor(size: int = TINY_IMAGE_SIZE) -> RsccImageProcessor:
    """rscc's image processor (LLaVA-OneVision's with SigLIP normalisation) for a `size` x `size` vision tower."""
    return RsccImageProcessor(
        size={"height": size, "width": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_grid_pinpoints=[[size * h, size * w] for h in (1, 2) for w in (1, 2)],
    )


def make_processor(image_size: int = TINY_IMAGE_SIZE, patch_size: int = TINY_PATCH_SIZE) -> RsccProcessor:
    """An RsccProcessor with the tiny tokenizer for a vision tower of `image_size` px and `patch_size` px patches
    (the defaults match `tiny_config`; 384 and 14 match LLaVA-OneVision)."""
    grid = image_size // patch_size
    return RsccProcessor(
        image_processor=build_image_processor(image_size),
        tokenizer=build_tiny_tokenizer(),
        num_image_tokens=grid * grid,
        prompt=DEFAULT_PROMPT,
    )


def make_tiny_checkpoint(folder: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a tiny random rscc model and its processor to `folder`, loadable with `from_pretrained`.

    Args:
        folder (`str` or `Path`): output folder (created).
        seed (`int`): seed of the random weights.
        **config_overrides: [`RsccConfig`] options.

    Returns:
        The folder's path.
    """
    folder = Path(folder)
    processor = make_processor()
    torch.manual_seed(seed)
    model = RsccForConditionalGeneration(tiny_config(processor.tokenizer, **config_overrides))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


__all__ = [
    "build_tiny_tokenizer",
    "tiny_config",
    "llava_onevision_0_5b_config",
    "build_image_processor",
    "make_processor",
    "make_tiny_checkpoint",
]
