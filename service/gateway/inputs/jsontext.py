"""JSON text from a client, parsed in bounded memory and stack.

Two ways a small body becomes a big problem in ``json.loads``: nesting (``[[[[...`` 5,000 levels deep raises
``RecursionError``) and amplification (each number, list or object becomes a Python object of 24-90 bytes, so
a 64 MiB v2 body of ``0.5,0.5,...`` — or its 100 KB gzip — parses to about 600 MB; measured). Both are
refused before or while parsing, never as a 500.
"""

from __future__ import annotations

import json
from typing import Any

from service.gateway.errors import LimitExceeded, MalformedRequest

# Upper bound of the Python memory one structural character ("," ":" "[" "{") can cost once parsed: an object
# member with a fresh key measured 90 bytes, a float in a list 36, an empty list or dict 34-38 (tracemalloc).
PARSED_BYTES_PER_VALUE = 96
MAX_DEPTH_HINT = 64  # what the message suggests; the real bound is Python's recursion limit


# Every byte but the structural ones: deleting them in one C pass counts the rest (4x faster than 4 counts;
# 22 ms for a 64 MiB body of base64, which keeps almost nothing).
_NOT_STRUCTURAL = bytes(c for c in range(256) if c not in b",:[{")


def parsed_size(text: bytes | str) -> int:
    """An upper bound of the memory ``json.loads(text)`` takes, from one pass over the text (C speed)."""
    raw = text.encode() if isinstance(text, str) else text
    structural = len(raw.translate(None, _NOT_STRUCTURAL))
    return len(raw) + PARSED_BYTES_PER_VALUE * structural


def loads(text: bytes | str, field: str, max_parsed_bytes: int, expected: str = "JSON") -> Any:
    """``json.loads`` or a 400 (malformed, nested too deep) / 413 (would parse to more than ``max_parsed_bytes``,
    limit ``max_decoded_bytes_per_request``) naming ``field``. NaN and Infinity literals parse (as Python does);
    the schemas refuse them wherever a number is taken, naming the field."""
    size = parsed_size(text)
    if size > max_parsed_bytes:
        raise LimitExceeded("max_decoded_bytes_per_request", field,
                            f"this JSON would take about {size} bytes of memory to parse (its numbers, lists and "
                            f"objects cost up to {PARSED_BYTES_PER_VALUE} bytes each); send arrays as base64 (v1) "
                            f"or binary tensors (v2, binary_data_size)")
    try:
        return json.loads(text)
    except RecursionError:
        raise MalformedRequest(field, f"JSON nested too deeply; expected {expected} (a few levels, at most "
                                      f"{MAX_DEPTH_HINT})") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and an integer of more than 4,300 digits
        raise MalformedRequest(field, f"malformed JSON: {_short(str(exc))}; expected {expected}") from None


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."
