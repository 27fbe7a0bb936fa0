"""rscc caption metric for the `evaluate` library, loaded by path (Hub metrics cannot be fetched offline):

    import evaluate
    metric = evaluate.load("eval/rscc_caption_metric.py")
    metric.compute(predictions=["A road is built."], references=[["a road is built", "a new road appears"]])

It delegates to `rscc.metrics.score_captions`, so its numbers are those of `rscc eval` under the same convention.
"""

import datasets
import evaluate

from rscc.metrics import CAPTION_METRICS, CONVENTIONS, DEFAULT_CONVENTION, score_captions

_DESCRIPTION = """\
Change-captioning metrics of the coco-caption scorers (pycocoevalcap): BLEU-1..4, METEOR 1.5 (needs Java),
ROUGE-L, CIDEr-D and S_m = mean(BLEU-4, METEOR, ROUGE-L, CIDEr-D), on the 0-100 scale, under a named
normalisation convention: """ + "; ".join(f"{name}: {text}" for name, text in CONVENTIONS.items())

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of predicted captions, one per image pair.
    references: list of lists of reference captions, aligned with `predictions`.
    convention: one of "ccexpert" (default), "ptb", "vocab-ids", "raw".
    vocab: word -> id mapping or vocabulary JSON path, for convention "vocab-ids".
    metrics: names to compute, from BLEU-1, BLEU-2, BLEU-3, BLEU-4, METEOR, ROUGE-L, CIDEr-D, S_m (default: all).
    require_meteor: raise when Java is missing instead of returning None for METEOR and S_m.
Returns:
    one entry per metric (0-100, None when not computable) and "convention".
"""

_CITATION = """\
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
@article{liu2022rsiccformer, title={Remote Sensing Image Change Captioning With Dual-Branch Transformers: A New
  Method and a Large Scale Dataset}, author={Liu, Chenyang and others}, journal={IEEE TGRS}, year={2022}}
"""


class RsccCaptionMetric(evaluate.Metric):
    """Corpus-level change-captioning scores under a named convention (see `rscc.metrics`)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://github.com/salaniz/pycocoevalcap"],
        )

    def _compute(
        self,
        predictions,
        references,
        convention=DEFAULT_CONVENTION,
        vocab=None,
        metrics=CAPTION_METRICS,
        require_meteor=False,
    ):
        ids = [str(index) for index in range(len(predictions))]
        scores = score_captions(
            dict(zip(ids, predictions)),
            dict(zip(ids, references)),
            convention=convention,
            vocab=vocab,
            metrics=metrics,
            require_meteor=require_meteor,
        )
        return {**scores, "convention": convention}
