"""Request limits that depend on settings, checked after the body parsed.

Too many pairs/inputs -> 413 (the request is too big as a whole); a text over
``max_chars_per_text`` -> 422 naming the field (one field's value is invalid). A text over the
token limit is not an error: it is truncated and flagged.
"""

from __future__ import annotations

import re
from typing import Iterable

from app.batching import WorkItem
from app.errors import InvalidInput, TooManyItems
from app.settings import Settings

# Word pieces start at word and punctuation boundaries: each run of word characters and each other
# non-space character is at least one token (BERT's WordPiece splits every punctuation mark off).
_PIECES = re.compile(r"\w+|[^\w\s]")
TOKENS_PER_WORD = 1.1  # WordPiece tokens per word or mark; on STS-B dev the estimate / true count is 1.00 (median; 5-95%: 0.88-1.08)
CHARS_SCANNED_PER_TOKEN = 8  # a text is scanned up to max_tokens * this many characters


def check_limits(settings: Settings, field: str, count: int, texts: Iterable[tuple[str, str]]) -> None:
    """Check a request against the settings.

    Args:
        field: name of the list field (``pairs`` or ``input``).
        count: its length.
        texts: ``(dotted field path, text)`` for every text of the request.
    Raises:
        TooManyItems: ``count > max_items_per_request`` (413).
        InvalidInput: a text longer than ``max_chars_per_text`` characters (422).
    """
    if count > settings.max_items_per_request:
        raise TooManyItems(f"at most {settings.max_items_per_request} items per request, got {count}", field=field)
    for path, text in texts:
        if len(text) > settings.max_chars_per_text:
            raise InvalidInput(f"text longer than {settings.max_chars_per_text} characters", field=path)


def estimated_tokens(item: WorkItem, max_tokens: int) -> int:
    """What one work item costs the queue and a batch, in estimated tokens (an ``int`` in
    ``[3, max_tokens]`` per text; an NLI pair charges both texts).

    Counts word runs and punctuation marks (each at least one WordPiece token) times
    ``TOKENS_PER_WORD``, plus 2 special tokens, capped at ``max_tokens`` (the model truncates
    there). Only the first ``max_tokens * CHARS_SCANNED_PER_TOKEN`` characters are scanned, so the
    estimate costs microseconds whatever the text's length; the cap makes it exact for the
    worst cases (10,000 characters of "a a a" or "!!!": both ``max_tokens``). An estimate, not a
    tokenization: the batcher knows nothing of the model's tokenizer.
    """
    def one(text: str) -> int:
        pieces = len(_PIECES.findall(text, 0, max_tokens * CHARS_SCANNED_PER_TOKEN))
        return min(max_tokens, int(pieces * TOKENS_PER_WORD) + 2)

    return one(item.text) + (one(item.text_pair) if item.text_pair is not None else 0)
