"""Request limits that depend on settings, checked after the body parsed.

Too many pairs/inputs -> 413 (the request is too big as a whole); a text over
``max_chars_per_text`` -> 422 naming the field (one field's value is invalid). A text over the
token limit is not an error: it is truncated and flagged.
"""

from __future__ import annotations

from typing import Iterable

from app.errors import InvalidInput, TooManyItems
from app.settings import Settings


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
