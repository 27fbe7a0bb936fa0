"""Video encodings of a pair for rscc models: the two dates as two frames of a short video.

`pair_encoding="llava_video"` reuses LLaVA-OneVision's own video path (SigLIP per frame, 2x2 pooling of the projected
grid, one newline token) and needs no module of its own. `pair_encoding="video_encoder"` is
MV-CC's: a spatiotemporal encoder from transformers (VideoMAE or V-JEPA 2, `VIDEO_ENCODER_FAMILIES`: a 3-D patch
embedding whose tubelets span both dates) replaces SigLIP and the difference module, with a projector of its own to the
language model, and a change head that reads the fused tokens.
"""

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.activations import ACT2FN
from transformers.utils import IMAGE_PROCESSOR_NAME, VIDEO_PROCESSOR_NAME, cached_file

from .configuration_rscc import RsccConfig

# VideoMAE and V-JEPA 2 were pretrained on ImageNet-normalised frames; frames of an encoder folder that has no
# preprocessor config are normalised so.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class RsccVideoEncoder(nn.Module):
    """MV-CC's encoder: a transformers video model over the (before, after) frames, and a projector (Linear, GELU,
    Linear, as LLaVA-OneVision's) from its width to the language model's.

    The backbone is built from `config.video_encoder_config` without the submodules its family never runs for
    features (V-JEPA 2's predictor); its pretrained weights, if any, are loaded by
    `RsccForConditionalGeneration.from_llava_onevision(..., video_encoder=...)` through [`load_pretrained_backbone`].
    """

    def __init__(self, config: RsccConfig):
        super().__init__()
        encoder_options = dict(config.video_encoder_config)
        self.family = config.video_encoder_family
        self.backbone = AutoModel.from_config(AutoConfig.for_model(**encoder_options))
        for name in self.family.unused_submodules:
            setattr(self.backbone, name, None)
        width, text_width = encoder_options["hidden_size"], config.text_config.hidden_size
        self.num_frames = config.video_num_frames
        self.num_steps = config.video_num_frames // encoder_options["tubelet_size"]
        self.grid_size = config.token_grid_size
        self.projector = nn.Sequential(
            nn.Linear(width, text_width), ACT2FN[config.projector_hidden_act], nn.Linear(text_width, text_width)
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """
        Args:
            frames (`torch.Tensor` of shape `(num_pairs, num_frames, channels, height, width)`): normalised frames at
                the encoder's image size, before then after.

        Returns:
            `torch.Tensor` of shape `(num_pairs, num_steps, grid * grid, hidden_size)`: the encoder's last hidden
            states, one token grid per temporal step (tubelet).
        """
        inputs = {self.family.input_name: frames, **self.family.forward_options}
        hidden = self.backbone(**inputs, return_dict=True).last_hidden_state
        return hidden.view(hidden.shape[0], self.num_steps, self.grid_size**2, hidden.shape[-1])

    def encode_samples(self, pixel_values: torch.Tensor, num_dates: torch.LongTensor) -> torch.Tensor:
        """[`forward`] on a batch's images, `(num_images, channels, height, width)`, `num_dates[i]` for sample i, each
        exactly the encoder's frames per clip (refused otherwise)."""
        num_frames = self.num_frames
        if bool((num_dates != num_frames).any()):
            frames_field = self.family.num_frames_field
            raise ValueError(
                f"batch_num_images={num_dates.tolist()}: this model's video encoder takes {frames_field}={num_frames} "
                "dates per sample (its tubelets and positions are built for that many frames); caption longer "
                "series with pair_encoding='images' or 'llava_video'"
            )
        return self(pixel_values.view(len(num_dates), num_frames, *pixel_values.shape[1:]))

    def load_pretrained_backbone(self, pretrained: nn.Module) -> list[str]:
        """Copy a pretrained encoder's weights into the backbone, less those of the submodules rscc does not build.

        Args:
            pretrained (`nn.Module`): the transformers model of `config.video_encoder_config`'s model type (its frame
                count may differ: neither family keeps a position table in its weights).

        Returns:
            `list[str]`: the backbone's names of the weights loaded.
        """
        unused = tuple(f"{name}." for name in self.family.unused_submodules)
        weights = {name: value for name, value in pretrained.state_dict().items() if not name.startswith(unused)}
        self.backbone.load_state_dict(weights)
        return list(weights)


class RsccVideoChangeHead(nn.Module):
    """Change-detection head on the video encoder's tokens: the tubelets already mix both dates, so the head reads the
    fused tokens of every temporal step (concatenated per grid cell) instead of `[A; B; |A - B|]`; then the same
    projection, 3x3 context convolution and classifier as [`RsccChangeHead`]."""

    def __init__(self, config: RsccConfig):
        super().__init__()
        encoder = config.video_encoder_config
        width, hidden = encoder["hidden_size"], config.change_head_hidden_size
        num_steps = config.video_num_frames // encoder["tubelet_size"]
        self.grid_size = config.token_grid_size
        self.input_norm = nn.LayerNorm(width, eps=encoder.get("layer_norm_eps", 1e-6))
        self.input_proj = nn.Linear(num_steps * width, hidden)
        self.context_conv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.classifier = nn.Conv2d(hidden, config.change_head_num_classes, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tokens (`torch.Tensor` of shape `(num_pairs, num_steps, grid * grid, hidden_size)`).

        Returns:
            `torch.Tensor` of shape `(num_pairs, num_classes, grid, grid)`: logits per token.
        """
        steps = self.input_norm(tokens).permute(0, 2, 1, 3).flatten(2)
        grid = self.act(self.input_proj(steps)).transpose(1, 2).unflatten(2, (self.grid_size, self.grid_size))
        return self.classifier(self.act(self.context_conv(grid)))


def processor_options(config: RsccConfig, video_encoder: str | os.PathLike | None = None) -> dict:
    """[`RsccProcessor`] options that match `config`'s pair encoding: the placeholder layout and, for
    `"video_encoder"`, the encoder's frame size and normalisation.

    Args:
        config ([`RsccConfig`]).
        video_encoder (`str` or `os.PathLike`, *optional*): Hub id or folder of the video encoder, whose image or video
            preprocessor config (if it has one) gives `image_mean` / `image_std`; ImageNet's otherwise.

    Returns:
        `dict` of `RsccProcessor.from_llava_onevision` keyword arguments.
    """
    if config.pair_encoding != "video_encoder":
        return {"pair_encoding": config.pair_encoding}
    encoder = config.video_encoder_config
    normalisation = {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    # VideoMAE folders keep an image processor's config, V-JEPA 2 folders a video processor's.
    for file_name in (IMAGE_PROCESSOR_NAME, VIDEO_PROCESSOR_NAME) if video_encoder is not None else ():
        preprocessor_file = cached_file(str(video_encoder), file_name, _raise_exceptions_for_missing_entries=False)
        if preprocessor_file is not None:
            saved = json.loads(Path(preprocessor_file).read_text())
            normalisation.update({key: saved[key] for key in normalisation if key in saved})
            break
    frame_size = encoder[config.video_encoder_family.frame_size_field]
    size = {"height": frame_size, "width": frame_size}
    return {
        "pair_encoding": "video_encoder",
        "num_image_tokens": config.token_grid_size**2,
        "video_tubelet_size": encoder["tubelet_size"],
        "image_processor_options": {
            "size": size,
            "crop_size": size,
            "image_mean": list(normalisation["image_mean"]),
            "image_std": list(normalisation["image_std"]),
        },
    }


__all__ = ["RsccVideoEncoder", "RsccVideoChangeHead", "processor_options"]
