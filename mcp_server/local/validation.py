"""Request bodies checked against the published API's schemas, in one place.

The embedded backend stands in for Runloop's API, so a value the published request schemas
refuse (a wrong type, a value outside an enum, an integer out of its int32/int64 range) is
refused here too, with a 400 naming the field, and tests that drive the backend catch a client
that drifts from the published API. The schemas are a vendored copy (`published_schemas`,
generated from the documents; a test compares the two). Each body model names its schema
(`published_schema`) and `http.parse_body` calls `check` before the model's own rules.

Lenient where the SDKs need it:
- Fields the schemas do not declare are ignored, as clients newer or older than the server expect;
  `required` is left to the route's own model (execute without command_id, say, is served).
- Where the official SDK itself sends what the documents refuse, the SDK wins (`_OVERRIDES`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from .errors import ApiError
from .published_schemas import SCHEMAS

# (schema, property) -> the schema used instead, with why.
_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    # runloop-api-client's long-poll helper sends `min(remaining, 25.0)`: a float, often fractional.
    ("DevboxWaitForStatusRequest", "timeout_seconds"): {"type": "number", "nullable": True},
    ("DevboxWaitForCommandRequest", "timeout_seconds"): {"type": "number", "nullable": True},
    # The documents say `items: {type: object}` (a generator's "any"); the SDK types the bindings as
    # Iterable[object], and SQL parameters are scalars.
    ("SqlStatementParams", "params"): {"type": "array"},
    # Our extension: fractions of a second, so the MCP server's `execute` can wait a few ms for a
    # fast command and still show a longer one's first line at once (tools/execute.py).
    ("DevboxStartExecutionParameters", "optimistic_timeout"): {"type": "number", "nullable": True},
    # Typed integer, yet "Must be 0.5, 1, or a multiple of 2" (ResourceSize); the SDK sends a float.
    ("LaunchParameters", "custom_cpu_cores"): {"type": "number", "nullable": True},
}
_RANGES = {"int32": 2**31, "int64": 2**63}
_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "an array",
    "object": "an object",
}


@functools.cache
def _schema(name: str) -> dict[str, Any]:
    schema = dict(SCHEMAS[name])
    if "properties" in schema:
        schema["properties"] = {
            prop: _OVERRIDES.get((name, prop), sub) for prop, sub in schema["properties"].items()
        }
    return schema


def enum(name: str) -> tuple[str, ...]:
    """The values of a published enum (e.g. DevboxViewStatus)."""
    return tuple(SCHEMAS[name]["enum"])


def check(name: str, body: Any) -> None:
    """Raise ApiError(400) naming the first field of `body` that published schema `name` refuses."""
    for problem in _problems(_schema(name), body, ""):
        raise ApiError(400, f"invalid request: {problem}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems(schema: dict[str, Any], value: Any, where: str) -> Iterator[str]:
    if value is None and schema.get("nullable"):
        return
    ref = schema.get("$ref")
    if ref is not None:
        yield from _problems(_schema(ref.removeprefix("#/")), value, where)
        return
    label = where or "the body"
    if "oneOf" in schema:
        if not any(next(_problems(option, value, where), None) is None for option in schema["oneOf"]):
            yield f"{label} matches none of the published shapes; got {_show(value)}"
        return
    kind = schema.get("type")
    if kind is not None and not _is(kind, value):
        yield f"{label} must be {_TYPE_NAMES.get(kind, kind)}; got {_show(value)}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{label} must be one of {', '.join(map(str, schema['enum']))}; got {_show(value)}"
        return
    bound = _RANGES.get(schema.get("format", ""))
    if bound is not None and isinstance(value, int | float) and not -bound <= value < bound:
        yield f"{label} must be between {-bound} and {bound - 1}; got {_show(value)}"
        return
    if kind == "array" and "items" in schema:
        for index, item in enumerate(value):
            yield from _problems(schema["items"], item, f"{where}[{index}]")
    elif kind == "object":
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if key in properties:
                yield from _problems(properties[key], item, inner)
            elif isinstance(extra, dict):  # a map: every value has this schema
                yield from _problems(extra, item, inner)
            # other fields are not the published API's: ignored


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":  # JSON has one number type: 30.0 is an integer
        return not isinstance(value, bool) and (isinstance(value, int) or isinstance(value, float) and value.is_integer())
    if kind == "number":
        return not isinstance(value, bool) and isinstance(value, int | float)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True
