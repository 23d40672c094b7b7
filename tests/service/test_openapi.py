"""docs/openapi.yaml stays true: its paths are the app's routes, live answers match it, and schemathesis
finds no server error or non-conforming answer against the real gunicorn service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import requests
import yaml

from gitlab_sts.service.app import create_app
from gitlab_sts.service.paths import ConfigPaths
from tests.service.harness import Service

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())


def _resolve(node: Any) -> Any:
    """Inline $refs and turn OpenAPI 3.0 `nullable` into JSON Schema, for jsonschema."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = SPEC
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target)
        out = {k: _resolve(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_resolve(v) for v in node]
    return node


def _check(answer: requests.Response, path: str, method: str = "post") -> None:
    responses = SPEC["paths"][path][method]["responses"]
    assert str(answer.status_code) in responses, (path, answer.status_code, answer.text[:300])
    documented = _resolve(responses[str(answer.status_code)])
    media = answer.headers["Content-Type"].split(";")[0]
    assert media in documented["content"], (path, media)
    if media == "application/json":
        jsonschema.validate(answer.json(), documented["content"][media]["schema"])
    for name, header in documented.get("headers", {}).items():
        jsonschema.validate(answer.headers.get(name), header["schema"])


def test_spec_paths_are_the_app_routes(tmp_path: Path) -> None:
    app = create_app(ConfigPaths(tmp_path / "settings.yaml", tmp_path / "bindings", tmp_path / "keys"), watch=False)
    routes = {(rule.rule, m.lower()) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    documented = {(path, method) for path, item in SPEC["paths"].items() for method in item}
    assert documented == routes


def test_every_schema_is_valid_json_schema() -> None:
    for name, schema in SPEC["components"]["schemas"].items():
        jsonschema.Draft7Validator.check_schema(_resolve(schema))
        assert name[0].isupper()


def test_live_answers_match_the_spec(service: Service) -> None:
    token = service.job_token(environment="staging", environment_protected="false")
    _check(service.exchange(token), "/v1/token")
    _check(service.exchange(token, "/v1/explain"), "/v1/explain")
    _check(service.exchange(service.job_token(ref="feature/x")), "/v1/token")  # 403 invalid_target
    _check(service.exchange("not-a-token"), "/v1/token")  # 400
    _check(requests.post(service.url + "/v1/token", data=b"x" * 200_000, timeout=10,
                         headers={"Content-Type": "application/x-www-form-urlencoded"}), "/v1/token")  # 413
    for path in ("/.well-known/openid-configuration", "/.well-known/jwks.json", "/healthz", "/readyz", "/metrics"):
        _check(requests.get(service.url + path, timeout=10), path, "get")


def test_schemathesis_finds_no_server_error(service: Service, tmp_path: Path) -> None:
    import schemathesis  # noqa: F401 (a pinned dev dependency: missing must fail, not skip)
    report = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", str(SPEC_PATH), "--url", service.url,
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--workers", "2",
         "--seed", "1", "--no-color", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) >= 50, run.stdout[-1500:]
