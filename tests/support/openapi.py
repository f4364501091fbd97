"""Checking HTTP requests against the published Runloop OpenAPI documents (`shared/reference/openapi/`).

`PublishedApi.check(method, target, headers, body)` lists what a strict server could refuse:
an operation the documents do not publish, a query parameter they do not declare or whose value
their schema refuses, a JSON body that does not validate against the request schema (required
fields, types, enums, int32/int64 ranges, and no undeclared fields: every request schema says
`additionalProperties: false`), multipart form fields not in the schema.

OpenAPI 3.0 schemas are turned into JSON Schema 2020-12 (`nullable` becomes a `null` alternative)
and validated with `jsonschema`, `$ref`s resolved in the document they come from.

Where the reference copy is older than the API the official SDK (runloop-api-client 3.0.0,
generated from Runloop's current spec) speaks, or where it means "any value", `ALLOWANCES` says
so, one entry each with its evidence; nothing else is let through.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[2]


def spec_dir() -> Path | None:
    """Where the published documents are: `shared/` beside the clone (as in CI), or the team's copy."""
    for candidate in (REPO.parent / "shared", Path("/work/shared")):
        path = candidate / "reference" / "openapi"
        if path.is_dir():
            return path
    return None


# Each: (document, dotted location in components/schemas, replacement schema, why).
ALLOWANCES: list[tuple[str, str, Any, str]] = [
    (
        "runloop-devbox-api.yml", "LaunchParameters.properties.network_mode",
        {"type": "string", "enum": ["isolated", "none", "host"]},
        "our extension for the embedded backend; the create_devbox tool sends it only when the agent "
        "passes network_mode, described as 'embedded backend only'",
    ),
    (
        "runloop-axons-api.yml", "AxonCreateParams.properties.metadata",
        {"type": "object", "additionalProperties": {"type": "string"}, "nullable": True},
        "in runloop-api-client 3.0.0's AxonCreateParams (`metadata: Optional[Dict[str, str]]`)",
    ),
    (
        "runloop-axons-api.yml", "SqlStatementParams.properties.params.items",
        {},
        "'type: object' is the generator's 'any': the SDK types params as Iterable[object] and "
        "bindings are scalars",
    ),
    (
        "runloop-devbox-api.yml", "LaunchParameters.properties.custom_cpu_cores",
        {"type": "number", "nullable": True},
        "typed integer, yet its description and ResourceSize's say 'Must be 0.5, 1, or a multiple of 2'; "
        "runloop-api-client 3.0.0 types it `Optional[float]`",
    ),
]  # fmt: skip
# Query parameters the SDK sends that the reference copy does not declare: (method, path template, name, why).
QUERY_ALLOWANCES: list[tuple[str, str, str, str]] = [
    ("GET", "/v1/axons", "search", "in runloop-api-client 3.0.0's AxonListParams ('Search by axon ID or name')"),
]


def _openapi_to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k not in ("nullable", "discriminator", "example")}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _format_checker() -> FormatChecker:
    checker = FormatChecker()
    for name, bits in (("int32", 31), ("int64", 63)):

        def in_range(value: Any, bits: int = bits) -> bool:
            return not isinstance(value, int) or -(2**bits) <= value < 2**bits

        checker.checks(name)(in_range)
    return checker


@dataclass
class Operation:
    document: str
    method: str
    template: str
    pattern: re.Pattern[str]
    literal_segments: int
    op: dict[str, Any]

    def query_parameters(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.op.get("parameters", []) if p.get("in") == "query"}


class PublishedApi:
    def __init__(self, directory: Path) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.operations: list[Operation] = []
        for path in sorted(directory.glob("*.yml")):
            raw = yaml.safe_load(path.read_text())
            for document, location, replacement, _why in ALLOWANCES:
                if document == path.name:
                    _replace(raw["components"]["schemas"], location, replacement)
            self.documents[path.name] = raw
            for template, item in raw.get("paths", {}).items():
                for method, op in item.items():
                    if method in ("get", "post", "put", "patch", "delete"):
                        regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
                        literal = sum(1 for seg in template.split("/") if seg and not seg.startswith("{"))
                        self.operations.append(
                            Operation(path.name, method.upper(), template, re.compile(f"^{regex}$"), literal, op)
                        )
        self._registry = Registry().with_resources(
            (f"urn:{name}", DRAFT202012.create_resource(_openapi_to_jsonschema(doc)))
            for name, doc in self.documents.items()
        )
        self._formats = _format_checker()

    # -- lookup --------------------------------------------------------------------------------

    def operation(self, method: str, path: str) -> Operation | None:
        candidates = [o for o in self.operations if o.method == method and o.pattern.match(path)]
        return max(candidates, key=lambda o: o.literal_segments, default=None)

    def validator(self, document: str, schema: dict[str, Any]) -> Draft202012Validator:
        """A validator for `schema` (an OpenAPI schema or `$ref`) of `document`."""
        converted = _openapi_to_jsonschema(schema)
        if "$ref" in converted and converted["$ref"].startswith("#"):
            converted = {**converted, "$ref": f"urn:{document}{converted['$ref']}"}
        return Draft202012Validator(converted, registry=self._registry, format_checker=self._formats)

    def resolve(self, document: str, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.documents[document]
            for part in schema["$ref"].lstrip("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    # -- checking ------------------------------------------------------------------------------

    def check(self, method: str, target: str, headers: dict[str, str], body: bytes) -> list[str]:
        """What a strict server implementing the published documents could refuse in this request."""
        split = urlsplit(target)
        where = f"{method} {split.path}"
        op = self.operation(method, split.path)
        if op is None:
            return [f"{where}: no such operation in the published API"]
        problems: list[str] = []
        declared = op.query_parameters()
        allowed = {name for m, t, name, _ in QUERY_ALLOWANCES if m == method and t == op.template}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            if name in allowed:
                continue
            param = declared.get(name) or next(
                (p for n, p in declared.items() if "[key]" in n and re.fullmatch(re.escape(n).replace(r"\[key\]", r"\[[^]]+\]"), name)),
                None,
            )
            if param is None:
                problems.append(f"{where}: query parameter {name!r} is not declared ({', '.join(declared) or 'none are'})")
                continue
            problems += [f"{where}: query {name}={value!r}: {e}" for e in self._query_errors(op, param, value)]
        problems += [f"{where}: {e}" for e in self._body_errors(op, headers, body)]
        return problems

    def _query_errors(self, op: Operation, param: dict[str, Any], raw: str) -> Iterator[str]:
        schema = param.get("schema", {})
        kind = self.resolve(op.document, schema).get("type")
        value: Any = raw
        try:
            if kind == "integer":
                value = int(raw)
            elif kind == "number":
                value = float(raw)
            elif kind == "boolean":
                if raw not in ("true", "false"):
                    raise ValueError
                value = raw == "true"
        except ValueError:
            yield f"not a {kind}"
            return
        for error in self.validator(op.document, schema).iter_errors(value):
            yield _innermost(error).message

    def _body_errors(self, op: Operation, headers: dict[str, str], body: bytes) -> Iterator[str]:
        content = op.op.get("requestBody", {}).get("content", {})
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if not content:
            if body.strip() not in (b"", b"{}"):
                yield f"sends a body ({len(body)} bytes) to an operation that takes none"
            return
        if not body and not op.op["requestBody"].get("required"):
            return
        if kind not in content:
            yield f"sends {kind or 'no content type'}; the operation takes {', '.join(content)}"
            return
        schema = content[kind].get("schema", {})
        if kind == "application/json":
            try:
                data = json.loads(body)
            except ValueError as exc:
                yield f"body is not JSON: {exc}"
                return
            for error in self.validator(op.document, schema).iter_errors(data):
                inner = _innermost(error)
                yield f"body {'.'.join(str(p) for p in inner.absolute_path) or '(top level)'}: {inner.message}"
        elif kind == "multipart/form-data":
            message = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body
            )
            names = {part.get_param("name", header="content-disposition") for part in message.iter_parts()}
            properties = self.resolve(op.document, schema)
            for name in sorted(names - set(properties.get("properties", {}))):
                yield f"form field {name!r} is not in the schema"
            for name in properties.get("required", []):
                if name not in names:
                    yield f"form field {name!r} is required"


def _innermost(error: ValidationError) -> ValidationError:
    """The useful part of an error: for a nullable field, why the non-null alternative failed."""
    while error.context:
        branches = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
        error = best_match(branches or error.context)
    return error


def _replace(schemas: dict[str, Any], location: str, replacement: Any) -> None:
    parts = location.split(".")
    node = schemas
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = copy.deepcopy(replacement)


# The request bodies the embedded backend takes, by document: vendored for it in
# mcp_server/local/published_schemas.py with everything they reference (see `vendored_schemas`).
BACKEND_REQUEST_SCHEMAS = {
    "runloop-devbox-api.yml": [
        "DevboxCreateParameters", "DevboxUpdateParameters", "DevboxWaitForStatusRequest",
        "DevboxReadFileParameters", "DevboxWriteFileParameters", "DevboxDownloadFileParameters",
        "DevboxCreateExecutionParameters", "DevboxStartExecutionParameters", "DevboxWaitForCommandRequest",
        "DevboxKillExecutionRequest", "DevboxSendStdInRequest", "DevboxViewStatus", "DevboxSnapshotRequest",
    ],
    "runloop-axons-api.yml": ["AxonCreateParams", "PublishParams", "SqlStatementParams", "SqlBatchParams"],
    "runloop-blueprint-api.yml": ["BlueprintBuildParameters", "BlueprintBuildFromInspectionParameters"],
}  # fmt: skip
_DROPPED_KEYS = ("description", "example", "title", "default", "discriminator")


def vendored_schemas(directory: Path) -> dict[str, Any]:
    """`BACKEND_REQUEST_SCHEMAS` and every schema they reference, from the documents as published
    (no allowances), annotations dropped, `$ref`s as `#/<name>`."""
    out: dict[str, Any] = {}

    def strip(node: Any) -> Any:
        if isinstance(node, list):
            return [strip(item) for item in node]
        if not isinstance(node, dict):
            return node
        kept = {}
        for key, value in node.items():
            if key in _DROPPED_KEYS or key.startswith("x-"):
                continue
            if key == "$ref":
                value = "#/" + value.rsplit("/", 1)[1]
            kept[key] = value if key in ("enum", "required") else strip(value)
        if "properties" in node:
            kept["properties"] = {name: strip(schema) for name, schema in node["properties"].items()}
        return kept

    for document, roots in BACKEND_REQUEST_SCHEMAS.items():
        schemas = yaml.safe_load((directory / document).read_text())["components"]["schemas"]
        pending = list(roots)
        while pending:
            name = pending.pop()
            if name in out:
                continue
            out[name] = strip(schemas[name])
            pending += re.findall(r"'\$ref': '#/([^']+)'", repr(out[name]))
    return dict(sorted(out.items()))


def vendored_module(directory: Path) -> str:
    import pprint

    return (
        '"""The published request schemas the embedded backend checks bodies against (see `validation`).\n\n'
        "Generated from shared/reference/openapi/ by `python tests/support/openapi.py --write`: the\n"
        "request bodies the backend takes and the schemas they reference, annotations dropped. Do not\n"
        "edit: tests/runloop/test_contract.py fails when this differs from the documents.\n"
        '"""\n\n'
        "from typing import Any\n\n"
        f"SCHEMAS: dict[str, Any] = {pprint.pformat(vendored_schemas(directory), width=110, sort_dicts=False)}\n"
    )


VENDORED = REPO / "mcp_server" / "local" / "published_schemas.py"

if __name__ == "__main__":
    import sys

    found = spec_dir()
    if found is None:
        sys.exit("the published OpenAPI documents are not on this machine")
    text = vendored_module(found)
    if "--write" in sys.argv:
        VENDORED.write_text(text)
        print(f"wrote {VENDORED}")
    else:
        print(text)
