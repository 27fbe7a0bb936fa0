"""A transformers pipeline for change captioning, shipped as remote code in published rscc folders.

    from transformers import pipeline
    captioner = pipeline(model="user/rscc-model", trust_remote_code=True)
    captioner({"before": "before.png", "after": "after.png"})        # {"caption": "..."}
    captioner({"images": ["2019.png", "2021.png", "2023.png"]})      # a series of N dates, oldest first
    captioner([{"before": ..., "after": ...}, ...])                   # one dict per sample

Like the other remote-code files it imports only the standard library, torch and transformers.
"""

from transformers import Pipeline

from .captioning_rscc import DEFAULT_MAX_NEW_TOKENS, describe_batch

PIPELINE_TASK = "remote-sensing-change-captioning"
# The `custom_pipelines` entry of a published folder's config.json: the task, its class, and the Auto class that
# loads the model for it.
CUSTOM_PIPELINES = {PIPELINE_TASK: {"impl": "pipeline_rscc.ChangeCaptioningPipeline", "pt": ["AutoModel"], "tf": [],
                                    "type": "multimodal"}}


class ChangeCaptioningPipeline(Pipeline):
    """Caption the change in (before, after) pairs or series of N >= 2 dates: each input a `{"before": image,
    "after": image}` dict, an `{"images": [image, ...]}` dict (oldest first) or a tuple of images, each image anything
    the rscc processor accepts (path, PIL image, array)."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, max_new_tokens=None, **generate_kwargs):
        forward_kwargs = dict(generate_kwargs)
        if max_new_tokens is not None:
            forward_kwargs["max_new_tokens"] = max_new_tokens
        return {}, forward_kwargs, {}

    def __call__(self, inputs, **kwargs):
        """Args:
        inputs: one sample (`{"before", "after"}` dict, `{"images"}` dict or a tuple of dates) or a list of them.
        max_new_tokens (`int`, *optional*): caption length limit (default 64).

        Returns: `{"caption": str}` per sample; with a change head also `change_mask`, `changed_fraction` and `changed`
        (the step of `captioning_rscc.describe_batch`, the no-change shortcut included).
        """
        # A bare tuple of dates is one sample, not a batch of inputs.
        if isinstance(inputs, tuple):
            inputs = {"images": list(inputs)}
        elif isinstance(inputs, list) and inputs and isinstance(inputs[0], tuple):
            inputs = [{"images": list(sample)} for sample in inputs]
        return super().__call__(inputs, **kwargs)

    def preprocess(self, sample):
        if isinstance(sample, dict) and set(sample) == {"before", "after"}:
            dates = [sample["before"], sample["after"]]
        elif isinstance(sample, dict) and set(sample) == {"images"} and isinstance(sample["images"], (list, tuple)):
            dates = list(sample["images"])
        else:
            raise ValueError(
                "expected a {'before': image, 'after': image} dict, an {'images': [image, ...]} dict or a tuple of "
                f"images, got {sample!r}"
            )
        if len(dates) < 2:
            raise ValueError(f"expected two or more dates (oldest first), got {len(dates)}: {sample!r}")
        return self.processor(images=[dates])

    def _forward(self, model_inputs, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, **generate_kwargs):
        (description,) = describe_batch(
            self.model, self.processor, model_inputs, max_new_tokens=max_new_tokens, **generate_kwargs
        )
        return description

    def postprocess(self, description):
        if description["change_mask"] is None:
            return {"caption": description["caption"]}
        return description
