"""Request limits that depend on settings, checked after the body parsed.

Too many pairs/inputs -> 413 (the request is too big as a whole); a text over
``max_chars_per_text`` -> 422 naming the field (one field's value is invalid). A text over the
token limit is not an error: it is truncated and flagged.
"""

from __future__ import annotations

import string
from typing import Iterable

from app.batching import WorkItem
from app.errors import InvalidInput, TooManyItems
from app.settings import Settings

# WordPiece splits text at spaces and splits every punctuation mark off: a text has about as many
# tokens as whitespace-separated words plus punctuation marks, each counted with C-speed str methods.
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)
TOKENS_PER_WORD = 1.1  # tokens per word or mark; on STS-B dev the estimate / true count is 1.00 (median; 5-95%: 0.84-1.08)
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
    ``[2, max_tokens]`` per text; an NLI pair charges both texts).

    Counts whitespace-separated words and ASCII punctuation marks, times ``TOKENS_PER_WORD``, plus
    2 special tokens, capped at ``max_tokens`` (the model truncates there). Only the first
    ``max_tokens * CHARS_SCANNED_PER_TOKEN`` characters are looked at, with ``str.split`` and
    ``str.translate``, so a text costs a few microseconds whatever it holds (this runs on the event
    loop: a regex count took 39 ms for 128 texts of 8,000 "!", this 0.4 ms). The cap makes it exact
    for the worst cases (10,000 characters of "a a a" or "!!!": both ``max_tokens``). An estimate,
    not a tokenization: the batcher knows nothing of the model's tokenizer.
    """
    def one(text: str) -> int:
        head = text[:max_tokens * CHARS_SCANNED_PER_TOKEN]
        pieces = len(head.split()) + len(head) - len(head.translate(_DROP_PUNCTUATION))
        return min(max_tokens, int(pieces * TOKENS_PER_WORD) + 2)

    return one(item.text) + (one(item.text_pair) if item.text_pair is not None else 0)
