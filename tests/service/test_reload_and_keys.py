"""Hot reload of settings, bindings and keys; corrupt files keep the last good version; rotation by time."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt as pyjwt
import requests

from gitlab_sts.core.keys import KEYSET_FILE, KeyRing, generate_key
from tests.fuzz.appkit import make_app
from tests.service.harness import EXAMPLES, FakeGitLabProcess, Service, eventually, keyring_file, start_service

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def _staging(svc: Service) -> str:
    return svc.job_token(environment="staging", environment_protected="false")


def _ready(svc: Service) -> dict[str, object]:
    detail: dict[str, object] = requests.get(svc.url + "/readyz", timeout=10).json()
    return detail


def test_bindings_reload_add_and_delete(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    bindings = tmp_path / "b"
    bindings.mkdir()
    shutil.copy(EXAMPLES / "deploy-staging.yaml", bindings)
    svc = start_service(tmp_path / "svc", fake_gitlab, bindings=bindings)
    try:
        tag_token = svc.job_token(ref="v1.0.0", ref_type="tag", ref_path="refs/tags/v1.0.0")
        assert svc.exchange(tag_token).status_code == 403
        shutil.copy(EXAMPLES / "release-tags.yaml", svc.bindings_dir)
        eventually(lambda: svc.exchange(tag_token).status_code == 200)
        (svc.bindings_dir / "release-tags.yaml").unlink()
        eventually(lambda: svc.exchange(tag_token).status_code == 403)
    finally:
        svc.stop()


def test_corrupt_files_keep_the_last_good_version(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    svc = start_service(tmp_path, fake_gitlab)
    try:
        token = _staging(svc)
        assert svc.exchange(token).status_code == 200
        good_settings = svc.settings_path.read_text()
        svc.settings_path.write_text("issuer: [unclosed\n")
        (svc.bindings_dir / "broken.yaml").write_text("kind: GitLabAWSBinding\nspec: {: bad\n")
        (svc.keys_dir / KEYSET_FILE).write_text('{"keys": [{"jwk": {"kty": "RSA", "d": "c2VjcmV0"')
        detail = eventually(lambda: (d := _ready(svc))["errors"] and len(d["errors"]) == 3 and d)  # type: ignore[index, arg-type]
        assert set(detail["errors"]) == {"settings", "bindings", "keys"}
        assert "c2VjcmV0" not in str(detail)  # never echo key material
        answer = svc.exchange(token)
        assert answer.status_code == 200, answer.text  # still serving with the last good config
        # Workers that restart now (crash, OOM kill) find only broken files: they must still serve.
        for pid in _worker_pids(svc):
            os.kill(pid, signal.SIGKILL)
        eventually(lambda: len(_worker_pids(svc)) == 2 and _try(svc.url + "/healthz") is not None)
        for _ in range(6):
            answer = svc.exchange(token)
            assert answer.status_code == 200, answer.text
        metrics = requests.get(svc.url + "/metrics", timeout=10).text
        assert 'gitlab_sts_config_loaded{file="settings"} 0.0' in metrics
        assert 'gitlab_sts_config_reloads_total{file="settings",result="error"}' in metrics
        svc.settings_path.write_text(good_settings)
        (svc.bindings_dir / "broken.yaml").unlink()
        keyring_file(svc.keys_dir, _one_key())
        eventually(lambda: _ready(svc)["errors"] == {})
        assert svc.exchange(token).status_code == 200
    finally:
        svc.stop()


def test_invalid_binding_is_rejected_and_reported(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    svc = start_service(tmp_path, fake_gitlab)
    try:
        (svc.bindings_dir / "bad.yaml").write_text(
            "apiVersion: gitlab-sts.io/v1alpha1\nkind: GitLabAWSBinding\n"
            "metadata: {name: bad, namespace: team-x}\n"
            "spec: {project: {path: a/b}, rules: {refs: ['main'], condition: 'claims.('}, "
            "aws: {roleArn: 'arn:aws:iam::123456789012:role/x'}}\n"
        )
        detail = eventually(lambda: (d := _ready(svc))["rejected_bindings"] and d)
        assert detail["rejected_bindings"] == 1
        assert "team-x" not in str(detail)  # details go to the log, not to whoever can reach /readyz
        logged = eventually(lambda: [r for r in svc.log_records() if r.get("event") == "binding_rejected"])
        assert logged[0]["binding"] == "team-x/bad"
        assert "spec.rules.condition" in logged[0]["error"]
        assert detail["ready"] is True
    finally:
        svc.stop()


def _one_key(now: datetime | None = None) -> KeyRing:
    now = now or datetime.now(UTC)
    return KeyRing((generate_key("RS256", created_at=now - timedelta(hours=2), activate_at=now - timedelta(hours=1),
                                 retire_at=now + timedelta(days=1), remove_at=now + timedelta(days=2)),))


def test_signing_key_rotates_by_time(tmp_path: Path) -> None:
    """The service signs with the newest key whose window is open, on its own (injected) clock."""
    now = datetime(2030, 1, 1, tzinfo=UTC)
    clock = [now.timestamp()]
    app = make_app(tmp_path, clock=lambda: clock[0])
    old = generate_key("RS256", created_at=now - timedelta(days=1), activate_at=now - timedelta(hours=1),
                       retire_at=now + timedelta(days=1), remove_at=now + timedelta(days=2))
    switch = now + timedelta(hours=6)
    retiring = dataclasses.replace(old, retire_at=switch, remove_at=switch + timedelta(hours=1))
    new = generate_key("ES256", created_at=now - timedelta(hours=2), activate_at=switch,
                       retire_at=switch + timedelta(days=7), remove_at=switch + timedelta(days=8))
    future = generate_key("ES256", created_at=now + timedelta(days=1), activate_at=now + timedelta(days=2),
                          retire_at=now + timedelta(days=9), remove_at=now + timedelta(days=10))
    keyring_file(app.root / "keys", KeyRing((retiring, new, future)))
    app.app.extensions["gitlab_sts"].state.reload(force=False)

    def at(when: datetime) -> tuple[str, set[str]]:
        """The kid that signs a token exchanged at `when`, and the kids published then."""
        clock[0] = when.timestamp()
        answer = app.exchange(app.staging(iat=int(when.timestamp()), nbf=int(when.timestamp()),
                                          exp=int(when.timestamp()) + 3600))
        assert answer.status_code == 200, answer.get_json()
        published = {k["kid"] for k in app.client.get("/.well-known/jwks.json").get_json()["keys"]}
        return pyjwt.get_unverified_header(answer.get_json()["access_token"])["kid"], published

    # Published: the signing key and the pre-published next one; not the one created in the future.
    assert at(now) == (old.kid, {old.kid, new.kid})
    assert at(switch - timedelta(seconds=1)) == (old.kid, {old.kid, new.kid})
    assert at(switch) == (new.kid, {old.kid, new.kid})
    assert at(switch + timedelta(hours=1)) == (new.kid, {new.kid})  # the retired key's last token expired
    assert at(now + timedelta(days=1)) == (new.kid, {new.kid, future.kid})


def test_no_active_signing_key_is_503_and_not_ready(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    pending = generate_key("RS256", created_at=now - timedelta(hours=1), activate_at=now + timedelta(hours=5),
                           retire_at=now + timedelta(days=7), remove_at=now + timedelta(days=8))
    svc = start_service(tmp_path, fake_gitlab, ring=KeyRing((pending,)), wait=False)
    try:
        # A 503 Response is falsy, so wrap it: wait for any answer at all.
        answer = eventually(lambda: [r] if (r := _try(svc.url + "/readyz")) is not None else None)[0]
        assert answer.status_code == 503
        assert "no signing key is active" in answer.json()["problems"]
        token = svc.exchange(_staging(svc))
        assert token.status_code == 503
        assert token.json()["error"] == "temporarily_unavailable"
    finally:
        svc.stop()


def _worker_pids(svc: Service) -> list[int]:
    children = Path(f"/proc/{svc.process.pid}/task/{svc.process.pid}/children").read_text().split()
    return [int(c) for c in children]


def _try(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=5)
    except requests.ConnectionError:
        return None


def test_jwks_never_shows_private_members(service: Service) -> None:
    jwks = requests.get(service.url + "/.well-known/jwks.json", timeout=10)
    assert jwks.headers["Content-Type"].startswith("application/json")
    for key in jwks.json()["keys"]:
        assert not PRIVATE_MEMBERS & set(key), key
        assert key["use"] == "sig"
        assert (key["kty"], key["alg"], key["crv"]) == ("EC", "ES256", "P-256")
    private = (service.keys_dir / KEYSET_FILE).read_text()
    import json

    d_value = json.loads(private)["keys"][0]["jwk"]["d"]
    for path in ("/.well-known/jwks.json", "/readyz", "/metrics", "/.well-known/openid-configuration"):
        assert d_value not in requests.get(service.url + path, timeout=10).text


def test_binding_for_an_untrusted_issuer_is_reported(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    svc = start_service(tmp_path, fake_gitlab)
    try:
        (svc.bindings_dir / "elsewhere.yaml").write_text(
            "apiVersion: gitlab-sts.io/v1alpha1\nkind: GitLabAWSBinding\n"
            "metadata: {name: elsewhere, namespace: team-x}\n"
            "spec: {issuer: 'https://gitlab.other.example', project: {path: a/b}, "
            "aws: {roleArn: 'arn:aws:iam::123456789012:role/x'}}\n"
        )
        eventually(lambda: _ready(svc)["rejected_bindings"] == 1)
        logged = eventually(lambda: [r for r in svc.log_records() if r.get("event") == "binding_rejected"])
        assert logged[0]["binding"] == "team-x/elsewhere"
        assert logged[0]["error"].startswith(
            "spec.issuer: https://gitlab.other.example is not a GitLab instance the settings trust")
    finally:
        svc.stop()
