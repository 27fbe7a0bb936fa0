"""Caption and change-detection metrics, with the scoring conventions of the field's papers.

Caption scores are those of the `pycocoevalcap` scorers (the coco-caption reference implementation every
change-captioning paper uses): BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D, plus S_m = mean(BLEU-4, METEOR,
ROUGE-L, CIDEr-D), all on the 0-100 scale. Papers differ in how they normalise captions before scoring, which
moves the numbers by up to about 2 S_m points on the same predictions, so every function here takes a
`convention` and every report names it (see `conventions`).

Where each part lives:

- `conventions`: `CONVENTIONS`, `apply_convention`, `load_vocab`.
- `meteor`: the METEOR process (started early by the `rscc` console script) and the Java check.
- `scoring`: `score_captions`, `evaluate_captions`, `leave_one_out_agreement`.
- `inputs`: predictions and references by pair id (`load_references`, `deduplicate_predictions`, ...).
- `change_detection`: `ChangeDetectionMetrics`, `mask_to_class_indices`.
- `reports`: `write_report`, `format_table`, `package_versions`.
- `cli`: `rscc eval`.
"""

from ..caption_files import read_prediction_records
from .change_detection import ChangeDetectionMetrics, mask_to_class_indices
from .conventions import CONVENTIONS, DEFAULT_CONVENTION, apply_convention, load_vocab
from .inputs import deduplicate_predictions, every_row_as_a_pair, load_predictions, load_references
from .meteor import JavaNotFoundError
from .reports import format_table, package_versions, write_report
from .scoring import (
    CAPTION_METRICS,
    S_M_COMPONENTS,
    MissingPredictionsError,
    evaluate_captions,
    leave_one_out_agreement,
    score_captions,
)

__all__ = [
    "CAPTION_METRICS",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "S_M_COMPONENTS",
    "ChangeDetectionMetrics",
    "JavaNotFoundError",
    "MissingPredictionsError",
    "apply_convention",
    "deduplicate_predictions",
    "evaluate_captions",
    "every_row_as_a_pair",
    "format_table",
    "leave_one_out_agreement",
    "load_predictions",
    "load_references",
    "load_vocab",
    "mask_to_class_indices",
    "package_versions",
    "read_prediction_records",
    "score_captions",
    "write_report",
]
