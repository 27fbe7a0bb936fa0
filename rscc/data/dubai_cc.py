"""Dubai-CC: three Karpathy-style caption files, images in a before and an after folder, no change flag."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from ..caption_text import canonical_form
from .schema import ChangeRecord
from .source_files import read_karpathy_entries

DUBAI_CC_SPLITS = {"Train": "train", "Validation": "validation", "Test": "test"}

# Dubai-CC's annotators wrote free-form no-change sentences ("No change was made in this area.", "All remained the
# same."); these patterns cover every one of them in the published caption files (canonical form).
_DUBAI_CC_NO_CHANGE = re.compile(
    r"^(there is )?no (change|changes|changed|difference)\b"
    r"|^nothing (has )?changed\b"
    r"|^(everything|all) (remains|remained|is) the same\b"
    r"|^the area appears the same$"
)


def is_dubai_cc_no_change_caption(caption: str) -> bool:
    """Whether `caption` is one of Dubai-CC's no-change sentences (case and period ignored)."""
    return bool(_DUBAI_CC_NO_CHANGE.search(canonical_form(caption)))


def dubai_cc_records(captions_dir: Union[str, os.PathLike], images_dir: Union[str, os.PathLike],
                     before_dir: str = "500_2000", after_dir: str = "500_2010") -> Iterator[ChangeRecord]:
    """Records of Dubai-CC from its `{Train,Validation,Test}_Dubai_CC.json` caption files.

    Dubai-CC has no change flag: a pair is flagged 0 when all its captions are no-change sentences
    (`is_dubai_cc_no_change_caption`), as LEVIR-CC's flag is defined.

    Args:
        captions_dir: The folder holding the three caption files (or its parent, holding
            `description_jsontr_te_val/`).
        images_dir: The folder holding the before and after image folders.
        before_dir: Subfolder of `images_dir` with the 2000 images.
        after_dir: Subfolder of `images_dir` with the 2010 images.
    """
    captions_dir, images_dir = Path(captions_dir), Path(images_dir)
    if (captions_dir / "description_jsontr_te_val").is_dir():
        captions_dir = captions_dir / "description_jsontr_te_val"
    for file_split, split in DUBAI_CC_SPLITS.items():
        path = captions_dir / f"{file_split}_Dubai_CC.json"
        for entry in read_karpathy_entries(path):
            filename, captions = entry.filename, entry.captions
            yield ChangeRecord(
                id=Path(filename).stem,
                split=split,
                before=images_dir / before_dir / filename,
                after=images_dir / after_dir / filename,
                captions=captions,
                change_flag=0 if captions and all(map(is_dubai_cc_no_change_caption, captions)) else 1,
                source="dubai_cc",
                origin=f"{path} (images[{entry.position}])",
            )
