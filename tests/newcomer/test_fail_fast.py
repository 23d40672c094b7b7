"""A start with a broken settings, bindings or keys input refuses to run; reloads keep the last good version."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gitlab_sts.core.keys import KEYSET_FILE
from gitlab_sts.localserver import free_port, write_development_keys
from gitlab_sts.service.paths import ConfigPaths
from gitlab_sts.service.preflight import EXIT_CONFIG, first_load_problems, refuse_start_on_broken_config
from gitlab_sts.service.state import ConfigState

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "bindings"
CLI = str(Path(sys.executable).parent / "gitlab-sts")
GOOD = "issuer: https://sts.example.com\ngitlab:\n  - issuer: https://gitlab.example.com\n" \
       "    audiences: [https://sts.example.com]\n"


def _config(tmp_path: Path, settings: str | None = GOOD, bindings: bool = True,
            keys: str | None = "dev") -> ConfigPaths:
    if settings is not None:
        (tmp_path / "settings.yaml").write_text(settings)
    if bindings:
        shutil.copytree(EXAMPLES, tmp_path / "bindings")
    if keys == "dev":
        write_development_keys(tmp_path / "keys")
    elif keys is not None:
        (tmp_path / "keys").mkdir()
        (tmp_path / "keys" / KEYSET_FILE).write_text(keys)
    return ConfigPaths(tmp_path / "settings.yaml", tmp_path / "bindings", tmp_path / "keys")


def test_a_good_config_has_no_problems(tmp_path: Path) -> None:
    assert first_load_problems(_config(tmp_path)) == []


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"settings": GOOD.replace("issuer: https://sts", "isuer: https://sts")}, ["settings.yaml: ", "isuer"]),
    ({"settings": GOOD + "tokens: {lifetime: -5}\n"}, ["settings.yaml: ", "tokens.lifetime"]),
    ({"settings": None}, ["settings.yaml: cannot read: No such file or directory"]),
    ({"bindings": False}, ["bindings: bindings folder does not exist"]),
    ({"keys": None}, [f"keys/{KEYSET_FILE}: cannot read: No such file or directory"]),
    ({"keys": "{not json"}, [f"keys/{KEYSET_FILE}: not valid JSON"]),
], ids=["settings-typo", "settings-field", "settings-missing", "bindings-missing", "keys-missing", "keys-broken"])
def test_each_problem_names_its_file_and_field(tmp_path: Path, kwargs: dict[str, object], expected: list[str]) -> None:
    problems = first_load_problems(_config(tmp_path, **kwargs))  # type: ignore[arg-type]
    assert len(problems) == 1, problems
    assert str(tmp_path) in problems[0]  # the full path, as the pod's log must say which mount
    for text in expected:
        assert text in problems[0]


def _serve(tmp_path: Path, settings: Path, bindings: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return subprocess.run([CLI, "serve", "--settings", str(settings), "--bindings", str(bindings),
                           "--port", str(free_port()), "--workers", "1"], capture_output=True, text=True, env=env,
                          timeout=60, cwd=tmp_path)


def test_serve_refuses_a_settings_typo_with_file_and_field(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(GOOD + "tokens: {lifetme: 600}\n")
    result = _serve(tmp_path, settings, EXAMPLES)
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    assert "refusing to start" in result.stderr
    assert f"{settings}: tokens.lifetme" in result.stderr
    assert "Booting worker" not in result.stderr  # nothing was served, not even for a moment


def test_serve_refuses_missing_inputs_and_names_every_path(tmp_path: Path) -> None:
    result = _serve(tmp_path, tmp_path / "nowhere.yaml", tmp_path / "no-bindings")
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    assert f"{tmp_path / 'nowhere.yaml'}: cannot read: No such file or directory" in result.stderr
    assert f"{tmp_path / 'no-bindings'}: bindings folder does not exist" in result.stderr


def test_a_worker_without_any_good_copy_does_not_claim_to_use_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GITLAB_STS_STATE_DIR", str(tmp_path / "state"))
    paths = _config(tmp_path, settings=None)
    with caplog.at_level(logging.INFO, logger="gitlab_sts.service"):
        state = ConfigState(paths)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("last good copy" in m for m in messages), messages
    assert not any("keeping the last good version" in m for m in messages), messages
    error = state.current().errors["settings"]
    assert error == f"{paths.settings}: cannot read: No such file or directory"


def test_a_reload_still_keeps_the_last_good_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GITLAB_STS_STATE_DIR", str(tmp_path / "state"))
    paths = _config(tmp_path)
    state = ConfigState(paths)
    assert state.current().settings is not None
    paths.settings.write_text("issuer: [broken")
    with caplog.at_level(logging.INFO, logger="gitlab_sts.service"):
        snap = state.reload(force=True)
    assert snap.settings is not None and snap.settings.issuer == "https://sts.example.com"
    assert snap.errors["settings"].startswith("settings.yaml: not valid YAML")
    assert any("keeping the last good version" in r.getMessage() for r in caplog.records)
    # A fresh worker (nothing in memory) takes the copy the first one saved, and says so truthfully.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gitlab_sts.service"):
        other = ConfigState(paths)
    assert other.current().settings is not None
    assert any("using the last good copy" in r.getMessage() for r in caplog.records)


class _Clock:
    """A fake clock that one sleep moves forward; `on_sleep` runs at each sleep (the operator writing)."""

    def __init__(self, on_sleep: object = None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        if callable(self.on_sleep):
            self.on_sleep(self.sleeps)

    def __call__(self) -> float:
        return self.now


def test_a_fresh_install_waits_for_the_operators_keys(tmp_path: Path) -> None:
    paths = _config(tmp_path, keys=None)
    paths.keys.mkdir()  # the optional Secret volume: an empty folder until the operator creates the Secret

    def operator_writes(sleeps: int) -> None:
        if sleeps == 3:
            write_development_keys(paths.keys)

    clock = _Clock(operator_writes)
    out = io.StringIO()
    refuse_start_on_broken_config(paths, out, wait=10, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == 3
    assert "waiting up to 10 s for the operator" in out.getvalue()
    assert "refusing" not in out.getvalue()


def test_keys_that_never_come_refuse_after_the_wait(tmp_path: Path) -> None:
    paths = _config(tmp_path, keys=None)
    clock = _Clock()
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        refuse_start_on_broken_config(paths, out, wait=5, sleep=clock.sleep, clock=clock)
    assert exited.value.code == EXIT_CONFIG
    assert 5 <= clock.now <= 6
    assert f"gitlab-sts: error: {paths.keys / KEYSET_FILE}: cannot read: No such file or directory" in out.getvalue()


def test_a_broken_input_refuses_at_once_even_with_a_wait(tmp_path: Path) -> None:
    paths = _config(tmp_path, settings=GOOD + "tokens: {lifetme: 1}\n", keys=None)
    clock = _Clock()
    out = io.StringIO()
    with pytest.raises(SystemExit):
        refuse_start_on_broken_config(paths, out, wait=30, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == 0
    assert "tokens.lifetme" in out.getvalue() and "waiting" not in out.getvalue()


def test_a_pod_following_the_api_starts_without_the_operators_inputs(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # service/follow.py brings keys and bindings from the API: not ready until they arrive, but no crash loop.
    monkeypatch.setenv("GITLAB_STS_FOLLOW_API", "true")
    monkeypatch.setenv("GITLAB_STS_STATE_DIR", str(tmp_path / "state"))
    paths = _config(tmp_path, keys=None)
    clock = _Clock()
    out = io.StringIO()
    refuse_start_on_broken_config(paths, out, wait=10, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == 0
    assert f"following the API for it: {paths.keys / KEYSET_FILE}: cannot read" in out.getvalue()
    # Broken settings still refuse, following or not.
    paths.settings.write_text("issuer: [")
    with pytest.raises(SystemExit):
        refuse_start_on_broken_config(paths, io.StringIO(), wait=10, sleep=clock.sleep, clock=clock)


def test_following_the_api_without_a_state_folder_refuses_to_start(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The follower copies the keys Secret: without a configured state folder it would land in the temp dir.
    monkeypatch.setenv("GITLAB_STS_FOLLOW_API", "true")
    monkeypatch.delenv("GITLAB_STS_STATE_DIR", raising=False)
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        refuse_start_on_broken_config(_config(tmp_path), out, wait=0)
    assert exit_info.value.code == EXIT_CONFIG
    assert "GITLAB_STS_FOLLOW_API needs GITLAB_STS_STATE_DIR" in out.getvalue()
