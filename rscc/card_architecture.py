"""The architecture section of a model card, written from the configuration that was built: the encoder, one line per
rscc module the model has (and none for those it lacks), and the language model."""

from .configuration_rscc import RsccConfig


def describe_architecture(config: RsccConfig | None) -> str:
    """A few lines on the model that was built, for the card: its encoder, each rscc module it has (and only those),
    and its language model.

    Args:
        config ([`RsccConfig`], *optional*): the model's configuration.
    """
    if config is None:
        return "Architecture details were not given to the card generator (pass `--model FOLDER`)."
    text = config.text_config
    lines = [_describe_encoder(config), *_describe_change_modules(config)]
    lines.append(
        f"Language model: Qwen2, {text.num_hidden_layers} layers, width {text.hidden_size}, "
        f"vocabulary {text.vocab_size}"
    )
    return "\n".join(f"- {line}" for line in lines)


def _describe_encoder(config: RsccConfig) -> str:
    if config.pair_encoding == "video_encoder":
        encoder = config.video_encoder_config
        family = config.video_encoder_family
        return (
            f"Video encoder (MV-CC): {encoder['model_type']}, {encoder.get('num_hidden_layers', '?')} layers, width "
            f"{encoder['hidden_size']}, {encoder[family.frame_size_field]} px frames, {encoder['patch_size']} px "
            f"patches, tubelets of {encoder['tubelet_size']} of the {config.video_num_frames} dates, replacing SigLIP "
            "and its projector"
        )
    vision = config.vision_config
    layout = {
        "images": "each date's full token grid",
        "llava_video": "the dates as LLaVA-OneVision video frames (grids pooled 2x2)",
    }[config.pair_encoding]
    return (
        f"Vision tower: SigLIP, {vision.num_hidden_layers} layers, width {vision.hidden_size}, {vision.image_size} px "
        f"input, {vision.patch_size} px patches; the language model sees {layout}"
    )


def _describe_change_modules(config: RsccConfig) -> list[str]:
    """One line per rscc module the configuration builds; "stock" when it builds none."""
    lines = []
    if config.change_features == "difference_integration":
        lines.append(
            f"Difference integration (CCExpert) on SigLIP layers {config.difference_feature_layers}: "
            f"{config.difference_num_blocks} change-aware blocks, {config.difference_num_heads} heads"
        )
    elif config.change_features == "key_change":
        lines.append(
            f"Key change features (KCFI) on SigLIP layers {config.difference_feature_layers}: flow-warped residuals, "
            f"estimator width {config.key_change_hidden_size}"
        )
    if config.visual_tokens != "pair":
        lines.append(f"Visual tokens: {' + '.join(config.visual_segments)} segments per pair")
    if config.bitemporal_filter_layers:
        lines.append(
            f"Bi-temporal change semantic filter (Semantic-CC) after SigLIP layers {config.bitemporal_filter_layers}"
        )
    if config.use_change_head:
        shortcut = f"; no-change shortcut answers {config.no_change_caption!r}" if config.no_change_shortcut else ""
        lines.append(
            f"Change-detection head: {config.change_head_num_classes} classes, {config.change_loss_weighting} loss "
            f"weighting{shortcut}"
        )
    if config.change_filter != "none":
        lines.append(
            f"Change-mask token filter (MV-CC): {config.change_filter}, masks from the "
            + ("input" if config.change_mask_source == "input" else "change head's prediction")
        )
    return lines or ["No change module: the stock LLaVA-OneVision computation"]


__all__ = ["describe_architecture"]
