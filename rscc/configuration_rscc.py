"""Configuration of rscc models: LLaVA-OneVision plus CCExpert's difference-aware integration."""

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig

# CCExpert reads SigLIP hidden states [-11, -8, -5, -2] of the 27-layer tower; the llava-hf checkpoints keep 26
# layers (the last one was never used), so the same four layers are [-10, -7, -4, -1] there.
CCEXPERT_FEATURE_LAYERS = (-10, -7, -4, -1)


@strict
class RsccConfig(LlavaOnevisionConfig):
    r"""
    Configuration of [`RsccForConditionalGeneration`]: a [`LlavaOnevisionConfig`] (SigLIP vision tower, projector,
    Qwen2 language model) with the options of the bi-temporal difference-integration module.

    Args:
        use_difference_integration (`bool`, *optional*, defaults to `True`):
            Whether the image features of each (before, after) pair pass through the difference-integration
            module before the projector. When `False` the model computes exactly what LLaVA-OneVision computes.
        difference_feature_layers (`list[int]`, *optional*, defaults to `[-10, -7, -4, -1]`):
            Vision hidden-state indices (as in `hidden_states[i]`, negative from the end) of the levels the
            module refines. The default is CCExpert's four levels on the 26-layer SigLIP tower of llava-hf.
        difference_num_blocks (`int`, *optional*, defaults to 2):
            Number of change-aware transformer blocks, shared by all levels.
        difference_num_heads (`int`, *optional*, defaults to 9):
            Attention heads of those blocks; must divide the vision hidden size (1152 / 9 = 128 in CCExpert).
        difference_mlp_ratio (`float`, *optional*, defaults to 4.0):
            Width of the blocks' MLP relative to the vision hidden size.
        difference_layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the blocks' layer norms.

    Example:

    ```python
    >>> from rscc import RsccConfig, RsccForConditionalGeneration

    >>> config = RsccConfig()  # LLaVA-OneVision-0.5B-like dimensions
    >>> model = RsccForConditionalGeneration(config)
    ```"""

    model_type = "rscc"

    use_difference_integration: bool = True
    difference_feature_layers: list[int] | None = None
    difference_num_blocks: int = 2
    difference_num_heads: int = 9
    difference_mlp_ratio: float = 4.0
    difference_layer_norm_eps: float = 1e-6

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.difference_feature_layers is None:
            self.difference_feature_layers = list(CCEXPERT_FEATURE_LAYERS)
        self.difference_feature_layers = list(self.difference_feature_layers)
        if not self.use_difference_integration:
            return
        num_hidden_states = self.vision_config.num_hidden_layers + 1
        for index in self.difference_feature_layers:
            if not -num_hidden_states <= index < num_hidden_states:
                raise ValueError(
                    f"difference_feature_layers={self.difference_feature_layers}: index {index} is outside the "
                    f"{num_hidden_states} vision hidden states (embeddings + {num_hidden_states - 1} layers)"
                )
        if not self.difference_feature_layers:
            raise ValueError("difference_feature_layers is empty; give at least one vision hidden-state index")
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer}: difference integration adds its output to one "
                "vision layer, so vision_feature_layer must be a single index"
            )
        width = self.vision_config.hidden_size
        if self.difference_num_blocks < 1:
            raise ValueError(f"difference_num_blocks={self.difference_num_blocks}: expected at least 1")
        if self.difference_num_heads < 1 or width % self.difference_num_heads:
            raise ValueError(
                f"difference_num_heads={self.difference_num_heads} must divide the vision hidden size {width}"
            )

    @property
    def vision_grid_size(self) -> int:
        """Side of the square grid of vision tokens per image (27 for SigLIP at 384 px with 14 px patches)."""
        return self.vision_config.image_size // self.vision_config.patch_size


RsccConfig.register_for_auto_class()

__all__ = ["RsccConfig"]
