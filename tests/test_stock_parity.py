"""What stock LLaVA-OneVision accepts, rscc accepts (issue 30): transformers' model-specific and generation checks of
LLaVA-OneVision (`tests/models/llava_onevision/test_modeling_llava_onevision.py`, `tests/generation/test_utils.py`),
written here for rscc's pair inputs."""

import pytest
import torch
from transformers import GenerationMixin

from rscc.tiny_checkpoints import make_processor, tiny_config
from rscc.modeling_rscc import RsccForConditionalGeneration


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def build(processor, **options):
    torch.manual_seed(0)
    return RsccForConditionalGeneration(tiny_config(processor.tokenizer, **options)).eval()


def test_generation_mixin_is_a_direct_base_of_the_captioning_model():
    # transformers' generation tests check this of every generative model.
    assert GenerationMixin in RsccForConditionalGeneration.__bases__


@pytest.mark.parametrize(
    "options",
    [{"change_features": "none"}, {"change_features": "none", "change_filter": "multiply"}, {},
     {"change_features": "none", "pair_encoding": "llava_video"}],
)
def test_generate_from_inputs_embeds_without_pixel_values(processor, example_pairs, options):
    """Stock's `test_generate_from_inputs_embeds`: the caller embeds the prompt, images already merged in."""
    model = build(processor, **options)
    inputs = processor(images=example_pairs[:1])
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        from_embeds = model.generate(
            input_ids=inputs["input_ids"], inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
            max_new_tokens=3, do_sample=False,
        )
    # As stock given both: the prompt's ids, then the new tokens.
    prompt_length = inputs["input_ids"].shape[1]
    assert from_embeds.shape == (1, prompt_length + 3)
    assert torch.equal(from_embeds[:, :prompt_length], inputs["input_ids"])


def test_image_placeholders_without_images_or_embeddings_are_still_refused(processor, example_pairs):
    model = build(processor)
    inputs = processor(images=example_pairs[:1])
    with pytest.raises(ValueError, match="no pixel_values"):
        model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=2)


@pytest.mark.parametrize("pair_encoding", ["images", "llava_video"])
@pytest.mark.parametrize("vision_feature_layer", [-1, [-1], [-1, -2]])
def test_vision_feature_layer_list_concatenates_layers_as_stock(processor, example_pairs, pair_encoding,
                                                                vision_feature_layer):
    """Stock's `test_vision_feature_layers`: one layer or a list of layers, their features concatenated before the
    projector."""
    model = build(processor, change_features="none", pair_encoding=pair_encoding,
                  vision_feature_layer=vision_feature_layer)
    num_layers = 1 if isinstance(vision_feature_layer, int) else len(vision_feature_layer)
    processor.pair_encoding = pair_encoding
    try:
        inputs = processor(images=example_pairs)
    finally:
        processor.pair_encoding = "images"
    with torch.no_grad():
        features = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
        )
        logits = model(**inputs).logits
    assert model.model.multi_modal_projector.linear_1.in_features == num_layers * model.config.vision_config.hidden_size
    assert features.pooler_output[0].shape[-1] == model.config.text_config.hidden_size
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "options",
    [{}, {"change_features": "key_change", "use_change_head": True},
     {"change_features": "none", "use_change_head": True}, {"change_features": "none", "change_filter": "drop"}],
)
def test_vision_feature_layer_list_is_refused_where_a_module_reads_one_layer(processor, options):
    with pytest.raises(ValueError, match="single index"):
        tiny_config(processor.tokenizer, vision_feature_layer=[-1, -2], **options)


def test_base_model_refuses_labels_and_names_the_captioning_model(processor, example_pairs):
    """Stock's base model is in transformers' base-model table, so generic training code (the common `test_training`)
    never trains it; rscc's is not, so it refuses `labels` instead of returning an output without a loss."""
    from rscc.errors import RsccInputError

    captioner = build(processor)
    inputs = processor(images=example_pairs[:1])
    labels = inputs["input_ids"].clone()
    with pytest.raises(RsccInputError, match="no language-model head.*RsccForConditionalGeneration"):
        captioner.model(**inputs, labels=labels)
    with torch.no_grad():
        assert captioner.model(**inputs, labels=None).last_hidden_state.shape[1] == labels.shape[1]
        assert torch.isfinite(captioner(**inputs, labels=labels).loss)
