"""Generation, stock LLaVA-OneVision and rscc side by side: what transformers' `GenerationTesterMixin` covers (it is
not in transformers' source distribution, so tests/test_transformers_common.py cannot run it).

Every test runs for four models built from the same tiny random weights:

* `stock`: `LlavaOnevisionForConditionalGeneration`;
* `rscc-none`: rscc with a live difference module (non-zero output scale), no filter;
* `rscc-drop-masks`: `change_filter="drop"` on input change masks, the samples of a batch keeping different
  numbers of vision tokens (a changed block, no change, everything changed);
* `rscc-drop-head`: `change_filter="drop"` on the change head's own prediction (`change_mask_source="predicted"`).

The reference is plain greedy decoding by hand: one full forward per step, without a cache, one sample at a time,
end-of-sequence tokens forbidden so that every run makes the same number of tokens. The tests compare the public
output only: the new tokens of `generate` (the prompt part of `sequences` is the caller's `input_ids`).
"""

import copy
import inspect
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel

from rscc import RsccConfig, RsccForConditionalGeneration
from rscc.tiny_checkpoints import TINY_IMAGE_SIZE, tiny_config
from rscc.modeling_rscc import RsccModel

NEW_TOKENS = 5
VARIANTS = {
    "stock": None,
    "rscc-none": {},
    "rscc-drop-masks": {"change_filter": "drop", "change_filter_min_tokens": 4},
    "rscc-drop-head": {
        "change_filter": "drop",
        "use_change_head": True,
        "change_mask_source": "predicted",
        "change_filter_min_tokens": 4,
    },
}
RSCC_ONLY = {*RsccConfig.__dataclass_fields__} - {*LlavaOnevisionConfig.__dataclass_fields__}
NEW_MODULES = ("model.difference_module.", "model.change_head.", "difference_module.", "change_head.")


def stock_config(config: RsccConfig) -> LlavaOnevisionConfig:
    options = config.to_dict()
    for key in RSCC_ONLY | {"model_type", "architectures", "auto_map", "transformers_version"}:
        options.pop(key, None)
    return LlavaOnevisionConfig(**options)


@pytest.fixture(scope="module")
def models(tiny_processor, samples):
    return build_models(tiny_processor, samples)


def build_models(processor, samples):
    """The four models, eval mode, sharing every weight they have in common."""
    torch.manual_seed(0)
    base = RsccForConditionalGeneration(tiny_config(processor.tokenizer)).eval()
    with torch.no_grad():
        base.model.difference_module.output_scale.normal_()
    built = {}
    for name, options in VARIANTS.items():
        torch.manual_seed(1)
        if options is None:
            model = LlavaOnevisionForConditionalGeneration(stock_config(base.config))
        else:
            model = RsccForConditionalGeneration(tiny_config(processor.tokenizer, **options))
        missing, _ = model.load_state_dict(base.state_dict(), strict=False)
        assert all(key.startswith(NEW_MODULES) for key in missing), missing
        built[name] = model.eval()
    # A fresh head calls nearly every token changed; shift its "changed" logit so that it keeps about half the tokens
    # of the first pair (and a different number of the others).
    head_model = built["rscc-drop-head"]
    inputs = make_inputs(processor, "rscc-drop-head", samples)
    with torch.no_grad():
        logits = head_model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
        ).change_logits
        head_model.model.change_head.classifier.bias[1] -= (logits[0, 1] - logits[0, 0]).median()
    return built


def change_masks():
    """A changed quarter, no change, three changed quarters: three different kept counts under `drop`, and no
    sample keeps every token (so the batch's language-model sequence is shorter than its prompt)."""
    half = TINY_IMAGE_SIZE // 2
    quarter = np.zeros((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), np.uint8)
    quarter[:half, :half] = 255
    three_quarters = np.full_like(quarter, 255)
    three_quarters[half:, half:] = 0
    return [quarter, np.zeros_like(quarter), three_quarters]


@pytest.fixture(scope="module")
def samples(tiny_processor, example_pairs):
    """Three (pair, prompt, mask) samples; the second prompt is longer, so a batch of them is left-padded."""
    prompts = [
        tiny_processor.prompt,
        "Compare <image> with <image> and describe every change you see in detail.",
        tiny_processor.prompt,
    ]
    pairs = [example_pairs[0], example_pairs[1], example_pairs[0]]
    return list(zip(pairs, prompts, change_masks()))


def make_inputs(processor, variant, samples):
    pairs, prompts, masks = zip(*samples)
    masks = list(masks) if variant == "rscc-drop-masks" else None
    return dict(processor(images=list(pairs), text=list(prompts), change_masks=masks))


def generate(model, inputs, **options):
    options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False, **options}
    return model.generate(**inputs, **options)


def new_tokens(output, inputs):
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    return sequences[:, inputs["input_ids"].shape[1] :]


@torch.no_grad()
def greedy_by_hand(model, inputs, steps=NEW_TOKENS):
    """Greedy decoding of one sample, a full forward per step, no cache; end-of-sequence tokens forbidden."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rest = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **rest).logits[:, -1].clone()
        logits[:, eos] = -float("inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return ids[:, -steps:]


@pytest.fixture(scope="module")
def references(models, tiny_processor, samples):
    """Per variant, the hand-made greedy tokens of each sample alone, `(3, NEW_TOKENS)`."""
    with torch.random.fork_rng():
        return {
            variant: torch.cat(
                [greedy_by_hand(model, make_inputs(tiny_processor, variant, [sample])) for sample in samples]
            )
            for variant, model in models.items()
        }


@pytest.fixture(params=list(VARIANTS))
def case(request, models, tiny_processor, samples, references, single_torch_thread):
    variant = request.param
    return models[variant], make_inputs(tiny_processor, variant, samples), references[variant], variant


# --- the setting itself --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["rscc-drop-masks", "rscc-drop-head"])
def test_drop_keeps_different_counts_in_one_batch_and_never_all(variant, models, tiny_processor, samples):
    inputs = make_inputs(tiny_processor, variant, samples)
    extra = {"change_masks": inputs["change_masks"]} if "change_masks" in inputs else {}
    with torch.no_grad():
        features = models[variant].model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"], **extra
        )
    kept = features.kept_tokens.view(len(samples), -1)
    counts = kept.sum(1).tolist()
    assert counts[0] != counts[1] and not kept.all(1).any(), counts


# --- decoding strategies -------------------------------------------------------------------------------------------


def test_greedy_matches_decoding_by_hand(case):
    model, inputs, reference, _ = case
    assert new_tokens(generate(model, inputs), inputs).tolist() == reference.tolist()


def test_greedy_without_cache_matches_decoding_by_hand(case):
    model, inputs, reference, _ = case
    assert new_tokens(generate(model, inputs, use_cache=False), inputs).tolist() == reference.tolist()


def test_seeded_sampling_is_the_same_with_and_without_cache(case):
    model, inputs, _, _ = case
    runs = []
    for use_cache in (True, False, True):
        torch.manual_seed(7)
        runs.append(new_tokens(generate(model, inputs, do_sample=True, top_k=0, use_cache=use_cache), inputs))
    assert runs[0].tolist() == runs[1].tolist() == runs[2].tolist()


def test_beam_search_with_cache_matches_without_and_batched_matches_single(case, tiny_processor, samples):
    model, inputs, _, variant = case
    options = dict(num_beams=2, num_return_sequences=2)
    cached = new_tokens(generate(model, inputs, **options), inputs)
    assert cached.shape == (2 * len(samples), NEW_TOKENS)
    assert cached.tolist() == new_tokens(generate(model, inputs, use_cache=False, **options), inputs).tolist()
    for row, sample in enumerate(samples):
        single = make_inputs(tiny_processor, variant, [sample])
        assert new_tokens(generate(model, single, **options), single).tolist() == cached[2 * row : 2 * row + 2].tolist()


def test_assisted_decoding_with_a_copy_of_the_model_matches_greedy(case, tiny_processor, samples):
    model, _, reference, variant = case
    assistant = copy.deepcopy(model)
    for row, sample in enumerate(samples):  # assisted decoding takes one sample at a time
        inputs = make_inputs(tiny_processor, variant, [sample])
        output = generate(model, inputs, assistant_model=assistant)
        assert new_tokens(output, inputs).tolist() == reference[row : row + 1].tolist()


def continuation_inputs(inputs, first, variant, with_images):
    """The inputs of a call continuing from `first` (a `return_dict_in_generate` output): its sequences, the mask
    extended over the new tokens and, `with_images`, the same images (and masks)."""
    continued = dict(inputs) if with_images else {}
    continued["input_ids"] = first.sequences
    added = first.sequences.shape[1] - inputs["input_ids"].shape[1]
    continued["attention_mask"] = torch.cat(
        [inputs["attention_mask"], inputs["attention_mask"].new_ones(first.sequences.shape[0], added)], dim=1
    )
    return continued


def test_continuing_from_a_returned_cache_equals_one_longer_call(case):
    model, inputs, reference, variant = case
    first = generate(model, inputs, max_new_tokens=2, min_new_tokens=2, return_dict_in_generate=True)
    assert new_tokens(first, inputs).tolist() == reference[:, :2].tolist()
    # Stock (and rscc without drop) continue from the text alone, the images being in the cache (stock refuses them
    # again: their placeholders are in the cached part). Under drop the images are passed again, as
    # RsccForConditionalGeneration.generate documents: they decide which placeholders the cached prompt kept.
    continued = continuation_inputs(inputs, first, variant, with_images=variant.startswith("rscc-drop"))
    second = generate(model, continued, past_key_values=first.past_key_values, max_new_tokens=3, min_new_tokens=3)
    assert second[:, : first.sequences.shape[1]].tolist() == first.sequences.tolist()
    assert new_tokens(second, inputs).tolist() == reference.tolist()


@pytest.mark.parametrize("variant", ["rscc-drop-masks", "rscc-drop-head"])
def test_drop_continuation_without_the_images_is_an_error_not_other_tokens(variant, models, tiny_processor, samples):
    model, inputs = models[variant], make_inputs(tiny_processor, variant, samples)
    first = generate(model, inputs, max_new_tokens=2, min_new_tokens=2, return_dict_in_generate=True)
    continued = continuation_inputs(inputs, first, variant, with_images=False)
    with pytest.raises(ValueError, match="pixel_values"):
        generate(model, continued, past_key_values=first.past_key_values, max_new_tokens=3, min_new_tokens=3)


def test_static_cache_matches_decoding_by_hand(case):
    model, inputs, reference, _ = case
    output = generate(model, inputs, cache_implementation="static")
    assert new_tokens(output, inputs).tolist() == reference.tolist()


def test_left_padded_batch_matches_one_by_one(case, tiny_processor, samples):
    model, inputs, _, variant = case
    assert inputs["attention_mask"][0, 0] == 0, "prompts of different lengths are left-padded"
    batched = new_tokens(generate(model, inputs), inputs)
    for row, sample in enumerate(samples):
        single = make_inputs(tiny_processor, variant, [sample])
        assert new_tokens(generate(model, single), single).tolist() == batched[row : row + 1].tolist()


def test_returned_prompt_is_the_callers_input_ids(case):
    model, inputs, _, _ = case
    output = generate(model, inputs, return_dict_in_generate=True)
    assert output.sequences[:, : inputs["input_ids"].shape[1]].tolist() == inputs["input_ids"].tolist()


# --- the other defects of issue 13, item 5 -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_get_image_features_return_dict_false_gives_a_tuple(variant, models, tiny_processor, samples):
    model, inputs = models[variant], make_inputs(tiny_processor, variant, samples)
    extra = {"change_masks": inputs["change_masks"]} if "change_masks" in inputs else {}
    with torch.no_grad():
        output = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"],
            return_dict=False, **extra,
        )  # fmt: skip
    assert type(output) is tuple, type(output)
    with torch.no_grad():
        as_dict = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"],
            return_dict=True, **extra,
        )  # fmt: skip
    assert torch.equal(output[0], as_dict.last_hidden_state)


def saved_keys(model, folder):
    from safetensors import safe_open

    model.save_pretrained(folder)
    keys = set()
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            keys |= set(handle.keys())
    return keys


@pytest.mark.parametrize("with_head", [False, True], ids=["base-model", "captioning-model"])
@pytest.mark.parametrize("variant", ["rscc-none", "rscc-drop-head"])
def test_saved_key_layout_equals_stock(variant, with_head, models, tmp_path):
    """A checkpoint of rscc holds the keys stock LLaVA-OneVision writes (in that transformers version), plus rscc's
    own modules: tools that read the stock layout find every base weight."""
    rscc, stock = models[variant], models["stock"]
    if not with_head:
        rscc_model, stock_model = RsccModel(rscc.config), LlavaOnevisionModel(stock.config)
        rscc_model.load_state_dict(rscc.model.state_dict())
        stock_model.load_state_dict(stock.model.state_dict())
        rscc, stock = rscc_model, stock_model
    rscc_keys = saved_keys(rscc, tmp_path / "rscc")
    stock_keys = saved_keys(stock, tmp_path / "stock")
    own = {key for key in rscc_keys if any(part in key for part in ("difference_module.", "change_head."))}
    assert own, "rscc's own modules are saved"
    assert rscc_keys - own == stock_keys


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_fills_a_cache_given_under_the_name_stock_takes(variant, models, tiny_processor, samples):
    """transformers 5.24 renamed forward's `past_key_values` to `cache`: rscc takes the cache under whichever name
    the installed stock LLaVA-OneVision takes, and fills it with the sequence its language model ran."""
    from transformers import DynamicCache

    stock_names = inspect.signature(LlavaOnevisionForConditionalGeneration.forward).parameters
    name = "cache" if "cache" in stock_names else "past_key_values"
    model, inputs = models[variant], make_inputs(tiny_processor, variant, samples)
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    with torch.no_grad():
        output = model(**inputs, use_cache=True, **{name: cache})
    assert cache.get_seq_length() == output.logits.shape[1] > 0


@pytest.mark.parametrize("variant", ["rscc-none", "rscc-drop-head"])
def test_eager_attention_switches_the_difference_module_and_every_config(variant, models, tiny_processor, samples):
    model = copy.deepcopy(models[variant])
    inputs = make_inputs(tiny_processor, variant, samples)
    with torch.no_grad():
        sdpa_logits = model(**inputs).logits[:, -1]  # (left padding: the last position is a real one in every row)
    model.set_attn_implementation("eager")
    configs = {"config": model.config, **{name: getattr(model.config, name) for name in model.config.sub_configs}}
    implementations = {name: config._attn_implementation for name, config in configs.items()}
    assert set(implementations.values()) == {"eager"}, implementations
    assert model.model.config._attn_implementation == "eager"
    # Eager math throughout: nothing in the model (the difference module included) calls SDPA any more.
    with mock.patch.object(
        torch.nn.functional, "scaled_dot_product_attention", side_effect=AssertionError("SDPA called under eager")
    ):
        with torch.no_grad():
            eager_logits = model(**inputs).logits[:, -1]
    torch.testing.assert_close(eager_logits, sdpa_logits, rtol=1e-4, atol=1e-5)
