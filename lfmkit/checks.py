"""Reading user-supplied JSON and saying in one line what is wrong with a value.

`read_json_object(file, error)` turns every way a JSON file can be unusable (unreadable, not
UTF-8, not JSON, too deeply nested, not an object) into `error` naming the file; `shown` and
`json_type` write a value the way the user wrote it, for messages; `is_int` and
`is_finite_number` are the type tests JSON needs (true is not 1, NaN and 1e400 are not sizes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import LFMKitError


def read_json_object(file: Path, error: type[LFMKitError]) -> dict:
    """The JSON object in `file`, or `error` naming the file: unreadable, not UTF-8, not JSON,
    or JSON that is not an object. A UTF-8 byte-order mark is accepted."""
    try:
        raw = Path(file).read_bytes()
    except OSError as exc:
        raise error(f"{file}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{file}: not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5000-digit number, deep nesting
        raise error(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{file}: expected a JSON object, got {json_type(data)}")
    return data


def json_type(value: Any) -> str:
    """A value's type in JSON words (an array, a string, ...), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", tuple: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def shown(value: Any, limit: int = 60) -> str:
    """`value` as JSON spells it (a lone string quoted as elsewhere in lfmkit's messages, 'x'),
    cut to `limit` characters, for one-line messages."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):  # not JSON data (a Python object passed in directly)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a size


def is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False
