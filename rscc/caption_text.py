"""Caption conventions shared by data preparation, evaluation and inference."""

# The five canonical no-change sentences of LEVIR-CC (lower case, no final period).
NO_CHANGE_SENTENCES = (
    "there is no difference",
    "the two scenes seem identical",
    "the scene is the same as before",
    "no change has occurred",
    "almost nothing has changed",
)


def canonical_form(caption: str) -> str:
    """Lower-case, drop periods and collapse whitespace: the form used to compare captions."""
    return collapse_whitespace(caption.lower().replace(".", " "))


def is_no_change_caption(caption: str) -> bool:
    """Whether `caption` is one of LEVIR-CC's canonical no-change sentences (case and period ignored)."""
    return canonical_form(caption) in NO_CHANGE_SENTENCES


def collapse_whitespace(text: str) -> str:
    """Strip and collapse runs of whitespace to single spaces: the form every reader stores captions in."""
    return " ".join(text.split())
