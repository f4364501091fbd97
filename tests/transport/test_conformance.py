"""The official MCP conformance suite against `devbox-mcp serve --transport http`.

Every server scenario the suite knows is either run here or listed in FIXTURE_ONLY with the
test-only fixture it needs (a tool like `test_image_content` that a real server has no reason
to ship). A scenario the suite adds in a new version fails `test_every_scenario_is_accounted_for`
until someone decides which list it belongs to.

The suite has no option to send an Authorization header, so the server runs with `--no-auth` on
loopback for it; auth itself is covered by test_http_security.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.http_serving import serve_process

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
NODE = TOOLS / "node" / "bin" / "node"
SUITES = {
    "0.1.16": TOOLS / "node_modules" / "conformance-stable" / "dist" / "index.js",
    "0.2.0-alpha": TOOLS / "node_modules" / "conformance-next" / "dist" / "index.js",
}

HANDSHAKE = [
    "server-initialize",
    "logging-set-level",
    "ping",
    "completion-complete",
    "tools-list",
    "server-sse-multiple-streams",
    "resources-list",
    "prompts-list",
    "dns-rebinding-protection",
]
RUNS: dict[tuple[str, str | None], list[str]] = {
    ("0.1.16", None): HANDSHAKE,
    ("0.2.0-alpha", "2025-11-25"): [*HANDSHAKE, "server-session-lifecycle"],
    ("0.2.0-alpha", "2026-07-28"): [
        "completion-complete",
        "tools-list",
        "server-sse-multiple-streams",
        "resources-list",
        "prompts-list",
        "dns-rebinding-protection",
        "sep-2164-resource-not-found",
        "caching",
        "http-header-validation",
        "input-required-result-unsupported-methods",
    ],
}
_IRR = "tool test_input_required_result_* (multi-round-trip fixtures)"
FIXTURE_ONLY = {
    "server-stateless": "tools test_missing_capability, test_trigger_tool_change, test_trigger_prompt_change",
    "tools-call-simple-text": "tool test_simple_text",
    "tools-call-image": "tool test_image_content",
    "tools-call-audio": "tool test_audio_content",
    "tools-call-embedded-resource": "tool test_embedded_resource",
    "tools-call-mixed-content": "tool test_multiple_content_types",
    "tools-call-with-logging": "tool test_tool_with_logging",
    "tools-call-error": "tool test_error_handling",
    "tools-call-with-progress": "tool test_tool_with_progress",
    "tools-call-sampling": "tool test_sampling",
    "tools-call-elicitation": "tool test_elicitation",
    "json-schema-2020-12": "tool json_schema_2020_12_tool",
    "elicitation-sep1034-defaults": "tool test_elicitation_sep1034_defaults",
    "elicitation-sep1330-enums": "tool test_elicitation_sep1330_enums",
    "server-sse-polling": "tool test_reconnection",
    "resources-read-text": "resource test://static-text",
    "resources-read-binary": "resource test://static-binary",
    "resources-templates-read": "resource template test://template/{id}/data",
    "resources-subscribe": "resource test://watched-resource",
    "resources-unsubscribe": "resource test://watched-resource",
    "prompts-get-simple": "prompt test_simple_prompt",
    "prompts-get-with-args": "prompt test_prompt_with_arguments",
    "prompts-get-embedded-resource": "prompt test_prompt_with_embedded_resource",
    "prompts-get-with-image": "prompt test_prompt_with_image",
    "http-custom-header-server-validation": "tool test_x_mcp_header",
    "input-required-result-basic-elicitation": _IRR,
    "input-required-result-basic-sampling": _IRR,
    "input-required-result-basic-list-roots": _IRR,
    "input-required-result-request-state": _IRR,
    "input-required-result-multiple-input-requests": _IRR,
    "input-required-result-multi-round": _IRR,
    "input-required-result-missing-input-response": _IRR,
    "input-required-result-non-tool-request": "prompt test_input_required_result_prompt",
    "input-required-result-result-type": _IRR,
    "input-required-result-tampered-state": _IRR,
    "input-required-result-capability-check": _IRR,
    "input-required-result-ignore-extra-params": _IRR,
    "input-required-result-validate-input": _IRR,
}
EXTENSIONS = re.compile(r"^(tasks-|sep-2640-skills-)")  # optional extensions devbox-mcp does not offer

CASES = [(suite, spec, scenario) for (suite, spec), scenarios in RUNS.items() for scenario in scenarios]

pytestmark = pytest.mark.skipif(
    not NODE.exists() or not all(p.exists() for p in SUITES.values()),
    reason="conformance suite not installed: run .ci/node-tools (make install does)",
)


def node_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{NODE.parent}:{os.environ['PATH']}", "NO_COLOR": "1"}


def run_suite(url: str, out: Path, suite: str, spec: str | None) -> dict[str, list[dict]]:
    """One suite run over all its scenarios (much faster than a node process per scenario).

    The exit status is ignored: the fixture-only scenarios fail by design. What counts is the
    checks each scenario we run recorded in `<out>/server-<scenario>-<time>/checks.json`.
    """
    out = out / f"{suite}-{spec or 'default'}"
    command = [str(NODE), str(SUITES[suite]), "server", "--url", url, "--suite", "all", "-o", str(out)]
    if spec:
        command += ["--spec-version", spec]
    subprocess.run(command, capture_output=True, text=True, timeout=300, env=node_env())
    checks: dict[str, list[dict]] = {}
    for path in out.glob("*/checks.json"):
        match = re.match(r"^(?:server-)?(.+?)-\d{4}-\d\d-\d\dT", path.parent.name)
        if match:
            checks[match.group(1)] = json.loads(path.read_text())
    return checks


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str | None], dict[str, list[dict]]]:
    workdir = tmp_path_factory.mktemp("conformance")
    with serve_process(workdir, "--no-auth") as server, ThreadPoolExecutor(max_workers=len(RUNS)) as pool:
        futures = {run: pool.submit(run_suite, server.url, workdir, *run) for run in RUNS}
        return {run: future.result() for run, future in futures.items()}


@pytest.mark.parametrize(
    ("suite", "spec", "scenario"), CASES, ids=[f"{s}-{v or 'default'}-{n}" for s, v, n in CASES]
)
def test_scenario_passes(outcomes, suite: str, spec: str | None, scenario: str) -> None:
    checks = outcomes[(suite, spec)].get(scenario)
    assert checks, f"{scenario} recorded no checks (did the suite run it?)"
    failures = [f"{c['name']}: {c.get('errorMessage')}" for c in checks if c["status"] == "FAILURE"]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_scenario_is_accounted_for(suite: str) -> None:
    done = subprocess.run(
        [str(NODE), str(SUITES[suite]), "list", "--server"],
        capture_output=True,
        text=True,
        timeout=60,
        env=node_env(),
    )
    listed = set(re.findall(r"^\s+- (\S+)", done.stdout, re.MULTILINE))
    assert listed, done.stdout + done.stderr
    ran = {scenario for (s, _), scenarios in RUNS.items() if s == suite for scenario in scenarios}
    unaccounted = {name for name in listed - ran - set(FIXTURE_ONLY) if not EXTENSIONS.match(name)}
    assert not unaccounted, (
        f"new conformance scenarios: decide whether to run them or why not: {sorted(unaccounted)}"
    )
