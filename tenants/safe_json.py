"""Safe JSON: what a JSON value from a client or a person must be before it is stored.

The intake API, the services that store JSON and the admin's JSON fields all check values
here, so that every database refuses the same inputs (PostgreSQL rejects NUL characters
in text and jsonb, no database encodes a lone surrogate, deep nesting exhausts the parser
and the validators). A safe value:

- has no NUL character and no lone surrogate in any string, keys included;
- is nested at most MAX_DEPTH containers deep;
- has only finite numbers, between -MAX_NUMBER and MAX_NUMBER (no NaN or Infinity);
- is made of dicts with string keys, lists, strings, numbers, booleans and null.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

MAX_DEPTH = 32
MAX_NUMBER = 2**63 - 1  # a signed 64-bit integer: what every column and client can hold

UNSAFE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
# For the OpenAPI document: no NUL. Lone surrogates are refused too, but a pattern cannot
# say so (regex engines that match code points reject surrogate ranges), so the document's
# descriptions do.
SAFE_STRING_PATTERN = "^[^\\u0000]*$"


class UnsafeJSON(ValueError):
    """A JSON value that may not be stored; `path` is where (dotted, "" for the root)."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(f"{path}: {message}" if path else message)
        self.message, self.path = message, path

    def as_detail(self) -> dict[str, str]:
        return {"field": self.path, "message": self.message}


def _refuse_constant(name: str):
    raise UnsafeJSON(f"{name} is not a number JSON allows.")


def loads(text: str | bytes) -> Any:
    """Parse JSON text into a safe value.

    Raises json.JSONDecodeError or UnicodeDecodeError for text that is not JSON, and
    UnsafeJSON for JSON that is not safe (see check).
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise UnsafeJSON(f"Nested deeper than {MAX_DEPTH} levels.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        if isinstance(exc, UnsafeJSON):
            raise
        raise UnsafeJSON(f"A number is out of range ({exc}).") from None
    check(value)
    return value


def check_text(text: str, path: str = "") -> None:
    """Refuse a string with a NUL character or a lone surrogate. Raises UnsafeJSON."""
    found = UNSAFE_CHARACTERS.search(text)
    if found is None:
        return
    if found.group() == "\x00":
        raise UnsafeJSON("Contains a NUL character (\\u0000).", path)
    raise UnsafeJSON(f"Contains a lone surrogate (\\u{ord(found.group()):04x}).", path)


def check(value: Any) -> None:
    """Refuse a value that is not safe JSON (see the module's docstring). Raises UnsafeJSON."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise UnsafeJSON(f"Nested deeper than {MAX_DEPTH} levels.", path)
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise UnsafeJSON("Object keys must be strings.", path)
                    # The path is shown to people: an unsafe key is named with U+FFFD.
                    shown = UNSAFE_CHARACTERS.sub("\ufffd", key)
                    child_path = f"{path}.{shown}" if path else shown
                    check_text(key, child_path)
                    stack.append((child, depth + 1, child_path))
            else:
                for index, child in enumerate(item):
                    stack.append((child, depth + 1, f"{path}.{index}" if path else str(index)))
        elif isinstance(item, str):
            check_text(item, path)
        elif item is None or isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_NUMBER:
                raise UnsafeJSON(f"Numbers are at most {MAX_NUMBER} in magnitude.", path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeJSON("Numbers must be finite (no NaN or Infinity).", path)
            if abs(item) > MAX_NUMBER:
                raise UnsafeJSON(f"Numbers are at most {MAX_NUMBER} in magnitude.", path)
        else:
            raise UnsafeJSON(f"{type(item).__name__} is not a JSON value.", path)


def validation_error(exc: UnsafeJSON) -> ValidationError:
    return ValidationError(str(exc), code="unsafe_json")


def validate_safe_text(value: Any) -> None:
    """A form or model validator for text fields. Raises ValidationError."""
    if isinstance(value, str):
        try:
            check_text(value)
        except UnsafeJSON as exc:
            raise validation_error(exc) from None


class SafeJSONField(forms.JSONField):
    """A form JSON field that accepts only safe JSON (a form error, never a crash)."""

    def to_python(self, value):
        if self.disabled:
            return value
        if value in self.empty_values:
            return None
        if isinstance(value, list | dict | int | float | forms.fields.JSONString):
            converted = value
            try:
                check(converted)
            except UnsafeJSON as exc:
                raise validation_error(exc) from None
        else:
            try:
                converted = loads(value)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ValidationError(
                    self.error_messages["invalid"], code="invalid", params={"value": value}
                ) from None
            except UnsafeJSON as exc:
                raise validation_error(exc) from None
        if isinstance(converted, str):
            return forms.fields.JSONString(converted)
        return converted

    def bound_data(self, data, initial):
        # Shown again as typed when it is not safe JSON (Django's own parse would crash on
        # deep nesting, and a lone surrogate cannot be rendered).
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            return loads(data)
        except (ValueError, UnicodeDecodeError):
            return forms.fields.InvalidJSONInput(data)
