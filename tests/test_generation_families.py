"""transformers' generation test families (`tests/generation/test_utils.py`: greedy, sampling, beam search and beam
sample with their `return_dict_in_generate` outputs, `min_new_tokens`, prompt lookup), written for rscc's pair inputs
under each `change_features`, `change_filter` and `pair_encoding` that keeps every vision token. Stock side by side,
the drop filter, assisted decoding, static caches and continuing from a cache are in tests/test_generation_parity.py.

Every model is the tiny random one of `rscc.tiny_checkpoints.tiny_config`; end-of-sequence tokens are held off with
`min_new_tokens` so that every run makes `NEW_TOKENS` tokens.
"""

import pytest
import torch

from rscc.tiny_checkpoints import make_processor, tiny_config
from rscc.modeling_rscc import RsccForConditionalGeneration

NEW_TOKENS = 4
VARIANTS = {
    "plain": {"change_features": "none"},
    "difference_integration": {"change_features": "difference_integration"},
    "key_change": {"change_features": "key_change", "use_change_head": True},
    "multiply": {"change_features": "none", "change_filter": "multiply"},
    "llava_video": {"change_features": "none", "pair_encoding": "llava_video"},
}


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def models(processor):
    built = {}
    for name, options in VARIANTS.items():
        torch.manual_seed(0)
        built[name] = RsccForConditionalGeneration(tiny_config(processor.tokenizer, **options)).eval()
    return built


def make_inputs(processor, variant, pairs, prompts):
    processor.pair_encoding = VARIANTS[variant].get("pair_encoding", "images")
    try:
        return dict(processor(images=pairs, text=prompts))
    finally:
        processor.pair_encoding = "images"


@pytest.fixture(params=list(VARIANTS))
def case(request, models, processor, example_pairs, single_torch_thread):
    """A variant's model and a left-padded batch of two samples (the second prompt is longer)."""
    prompts = [processor.prompt, "Compare <image> with <image> and describe every change you see in detail."]
    return request.param, models[request.param], make_inputs(processor, request.param, example_pairs, prompts), prompts


def generate(model, inputs, **options):
    options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False, **options}
    with torch.no_grad():
        return model.generate(**inputs, **options)


def new_tokens(output, inputs):
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    return sequences[:, inputs["input_ids"].shape[1] :]


def check_dict_output(output, inputs, model, num_sequences, with_beam_outputs=False):
    """`GenerationTesterMixin._check_generate_outputs`: one score and one logits row set per new token, each
    `(num_sequences, vocab_size)`; beam outputs add the sequence scores and the beam indices."""
    vocab_size = model.config.text_config.vocab_size
    assert output.sequences.shape == (num_sequences, inputs["input_ids"].shape[1] + NEW_TOKENS)
    assert len(output.scores) == len(output.logits) == NEW_TOKENS
    for scores, logits in zip(output.scores, output.logits):
        assert scores.shape == logits.shape == (num_sequences, vocab_size)
    assert output.past_key_values is not None
    if with_beam_outputs:
        assert output.sequences_scores.shape == (num_sequences,)
        assert output.beam_indices.shape[0] == num_sequences


DICT_OPTIONS = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)


def test_greedy_dict_output_picks_the_best_score_and_equals_no_cache(case):
    _, model, inputs, _ = case
    output = generate(model, inputs, **DICT_OPTIONS)
    check_dict_output(output, inputs, model, num_sequences=2)
    assert new_tokens(output, inputs).tolist() == torch.stack([s.argmax(-1) for s in output.scores], 1).tolist()
    assert new_tokens(generate(model, inputs, use_cache=False), inputs).tolist() == new_tokens(output, inputs).tolist()


def test_left_padded_batch_equals_each_sample_alone(case, processor, example_pairs):
    variant, model, inputs, prompts = case
    assert inputs["attention_mask"][0, 0] == 0, "prompts of different lengths are left-padded"
    batched = new_tokens(generate(model, inputs), inputs)
    for row in range(2):
        single = make_inputs(processor, variant, example_pairs[row : row + 1], prompts[row : row + 1])
        assert new_tokens(generate(model, single), single).tolist() == batched[row : row + 1].tolist()


def test_seeded_sampling_dict_output_is_the_same_with_and_without_cache(case):
    _, model, inputs, _ = case
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(3)
        runs.append(generate(model, inputs, do_sample=True, num_return_sequences=2, use_cache=use_cache,
                             **DICT_OPTIONS))
    check_dict_output(runs[0], inputs, model, num_sequences=4)
    assert runs[0].sequences.tolist() == runs[1].sequences.tolist()


@pytest.mark.parametrize("do_sample", [False, True], ids=["beam_search", "beam_sample"])
def test_beam_dict_output_is_the_same_with_and_without_cache(case, do_sample):
    _, model, inputs, _ = case
    options = dict(num_beams=2, num_return_sequences=2, do_sample=do_sample, **DICT_OPTIONS)
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(5)
        runs.append(generate(model, inputs, use_cache=use_cache, **options))
    check_dict_output(runs[0], inputs, model, num_sequences=4, with_beam_outputs=True)
    assert runs[0].sequences.tolist() == runs[1].sequences.tolist()
    torch.testing.assert_close(runs[0].sequences_scores, runs[1].sequences_scores)


def test_min_new_tokens_holds_off_end_of_sequence_and_max_new_tokens_stops(case):
    """The first greedy token made the end-of-sequence token: without `min_new_tokens` each sample stops at once,
    with it the model goes on to `max_new_tokens`, the end-of-sequence token never chosen before."""
    _, model, inputs, _ = case
    first = new_tokens(generate(model, inputs, max_new_tokens=1, min_new_tokens=1), inputs)[:, 0]
    eos = first.unique().tolist()
    stopped = new_tokens(generate(model, inputs, min_new_tokens=0, eos_token_id=eos, pad_token_id=eos[0]), inputs)
    assert stopped.shape[1] < NEW_TOKENS and set(stopped[:, 0].tolist()) <= set(eos)
    held = new_tokens(generate(model, inputs, min_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=eos[0]), inputs)
    assert held.shape[1] == NEW_TOKENS and not any(token in eos for token in held.flatten().tolist())


def test_prompt_lookup_decoding_matches_greedy(case, processor, example_pairs):
    """Stock's `test_prompt_lookup_decoding_matches_greedy_search` (one sample at a time, as assisted decoding)."""
    variant, model, _, prompts = case
    inputs = make_inputs(processor, variant, example_pairs[:1], prompts[:1])
    greedy = generate(model, inputs)
    assert generate(model, inputs, prompt_lookup_num_tokens=2, max_matching_ngram_size=2).tolist() == greedy.tolist()
