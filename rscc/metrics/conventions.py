"""Scoring conventions: how the field's papers normalise captions before scoring, one name per way.

- `"ccexpert"` (default): lower-case, delete ".", split on whitespace (CCExpert's `eval_CCExpert.py`).
- `"ptb"`: the Stanford PTBTokenizer shipped with pycocoevalcap (the COCO caption evaluation; needs Java).
- `"vocab-ids"`: the classic repositories (RSICCformer, Chg2Cap, Change-Agent, RSCaMa, MV-CC): words mapped
  through the training vocabulary, out-of-vocabulary words to `<UNK>`, scored as strings of ids.
- `"raw"`: no normalisation (Semantic-CC).

Whitespace is always stripped and collapsed first: ROUGE-L splits on single spaces, so the leading space of
LEVIR-CC's `raw` captions would otherwise cost about 5 ROUGE-L points.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from ..caption_text import collapse_whitespace
from .meteor import require_java

CONVENTIONS = {
    "ccexpert": "lower-case, delete '.', split on whitespace (CCExpert, eval_CCExpert.py)",
    "ptb": "Stanford PTBTokenizer of pycocoevalcap: lower-case, punctuation removed (COCO caption evaluation)",
    "vocab-ids": (
        "words mapped through a vocabulary file, out-of-vocabulary words to <UNK>, scored as strings of ids "
        "(RSICCformer, Chg2Cap, Change-Agent, RSCaMa, MV-CC)"
    ),
    "raw": "no normalisation beyond whitespace (Semantic-CC)",
}
DEFAULT_CONVENTION = "ccexpert"


def check_convention(convention: str) -> str:
    """`convention` itself, if it is one of `CONVENTIONS`; else a ValueError listing them."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of: {', '.join(CONVENTIONS)}")
    return convention



def load_vocab(path: str | Path) -> dict[str, int]:
    """Read a classic word -> id vocabulary (`{"<NULL>": 0, "<UNK>": 1, "<START>": 2, "<END>": 3, "a": 4, ...}`).

    Args:
        path: JSON file, e.g. `splits/vocab_468.json` (the vocabulary Change-Agent publishes for LEVIR-MCI) or
            `vocab_501.json` (what Chg2Cap's `preprocess_data.py` builds: words seen at least 5 times).
    """
    path = Path(path)
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read vocabulary file {path}: {error}") from error
    if not isinstance(vocab, dict) or "<UNK>" not in vocab:
        raise ValueError(f"vocabulary file {path} is not a word -> id mapping with an <UNK> entry")
    return {str(word): int(index) for word, index in vocab.items()}


_SPECIAL_TOKENS = ("<NULL>", "<UNK>", "<START>", "<END>")


def _classic_tokens(caption: str) -> list[str]:
    # Chg2Cap / Change-Agent `preprocess_data.tokenize`: "," and ";" become tokens of their own, "?" and "." are
    # deleted, then split on spaces. Lower-casing is added: the classic decoders only emit lower-case vocabulary
    # words, and without it a sentence-case prediction would lose its first word to <UNK>. Special tokens written
    # out in a decoded caption ("<UNK>", "<END>") keep their upper-case spelling.
    text = caption.lower()
    for punctuation in (";", ","):
        text = text.replace(punctuation, " " + punctuation)
    for punctuation in ("?", "."):
        text = text.replace(punctuation, "")
    return [token.upper() if token.upper() in _SPECIAL_TOKENS else token for token in text.split()]


def _classic_ids(caption: str, vocab: Mapping[str, int]) -> str:
    # The classic test scripts drop <START>, <END> and <NULL> (padding) from references and predictions alike,
    # keep <UNK>, and join the ids with spaces.
    dropped = {vocab[token] for token in ("<START>", "<END>", "<NULL>") if token in vocab}
    ids = (vocab.get(token, vocab["<UNK>"]) for token in _classic_tokens(caption))
    return " ".join(str(index) for index in ids if index not in dropped)


def _ptb_tokenize(captions: Mapping[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java("the 'ptb' convention (Stanford PTBTokenizer)")
    tokenized = PTBTokenizer().tokenize({key: [{"caption": c} for c in caps] for key, caps in captions.items()})
    # PTBTokenizer maps output lines back to keys by position; a lost line would shift every caption after it.
    if any(len(tokenized.get(key, [])) != len(caps) for key, caps in captions.items()):
        raise RuntimeError("PTBTokenizer returned a different number of captions than it was given")
    return tokenized


def apply_convention(
    captions: Mapping[Hashable, Sequence[str]],
    convention: str = DEFAULT_CONVENTION,
    vocab: Mapping[str, int] | str | Path | None = None,
) -> dict[Hashable, list[str]]:
    """Normalise captions as a convention does before scoring.

    Args:
        captions: Any key (a pair id, say) -> list of captions.
        convention: One of `CONVENTIONS`.
        vocab: Word -> id mapping or the path of a vocabulary JSON; required by `"vocab-ids"`, ignored otherwise.

    Returns:
        The same keys -> normalised captions (strings of space-separated tokens, or of ids for `"vocab-ids"`).
    """
    check_convention(convention)
    collapsed = {key: [collapse_whitespace(c) for c in caps] for key, caps in captions.items()}
    if convention == "raw":
        return collapsed
    if convention == "ccexpert":
        return {
            key: [collapse_whitespace(c.lower().replace(".", "")) for c in caps] for key, caps in collapsed.items()
        }
    if convention == "ptb":
        return _ptb_tokenize(collapsed)
    if vocab is None:
        raise ValueError("the 'vocab-ids' convention needs a vocabulary (e.g. splits/vocab_468.json)")
    if not isinstance(vocab, Mapping):
        vocab = load_vocab(vocab)
    return {key: [_classic_ids(c, vocab) for c in caps] for key, caps in collapsed.items()}
