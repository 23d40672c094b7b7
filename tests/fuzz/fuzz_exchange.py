"""atheris fuzz target: POST /v1/token with fuzzed bodies, tokens and GitLab-signed garbage payloads.

Run standalone (coverage-guided, libFuzzer flags):
    .venv/bin/python tests/fuzz/fuzz_exchange.py -runs=100000 [-max_len=4096] [corpus_dir]
Invariant: every answer is an RFC 6749 JSON error below 500 with no token, unless the input is a
GitLab-signed token whose claims GitLab could have issued and a binding allows (then 200).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import urllib.parse
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["gitlab_sts"]):
    from gitlab_sts.core.claims import check_types
    from gitlab_sts.core.jwtparse import b64url_encode as _b64
    from gitlab_sts.core.jwtparse import parse_compact
    from tests.fuzz.appkit import RFC6749_ERRORS, make_app
    from tests.service.harness import GRANT, JWT_TYPE

# The app's config (a signing key among it) goes where the caller says: pytest passes its own tmp_path, which
# it cleans; libFuzzer exits without running Python's atexit, so a folder made here would stay behind.
APP = make_app(Path(os.environ.get("GITLAB_STS_FUZZ_DIR") or tempfile.mkdtemp(prefix="gitlab-sts-fuzz-")))
logging.getLogger("gitlab_sts").setLevel(logging.CRITICAL)
TOKEN_TYPES = [JWT_TYPE, "urn:ietf:params:oauth:token-type:id_token", "", "x"]



def _check(answer: object, signed_payload: str | None = None) -> None:
    status = answer.status_code  # type: ignore[attr-defined]
    body = answer.get_json(silent=True)  # type: ignore[attr-defined]
    if status == 200 and signed_payload is not None:
        claims = parse_compact(f"{_b64(b'{}')}.{_b64(signed_payload.encode())}.", max_bytes=1 << 20).claims
        check_types(claims)  # a token was issued: its claims must be GitLab-typed
        assert body and "access_token" in body
        return
    assert 400 <= status < 500 or status == 503, (status, body)
    assert isinstance(body, dict) and body.get("error") in RFC6749_ERRORS, body
    assert "access_token" not in body


def test_one_input(data: bytes) -> None:
    """One fuzz iteration."""
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:  # arbitrary body bytes
        _check(APP.post(fdp.ConsumeBytes(fdp.remaining_bytes())))
        return
    if mode == 1:  # a well-formed form around an arbitrary token string
        token = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
        form = {"grant_type": GRANT, "subject_token": token, "subject_token_type": fdp.PickValueInList(TOKEN_TYPES)}
        _check(APP.post(urllib.parse.urlencode(form)))
        return
    if mode == 2:  # three base64url segments of arbitrary bytes
        parts = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400)) for _ in range(3)]
        _check(APP.exchange(".".join(_b64(p) for p in parts)))
        return
    # A payload of arbitrary text, validly signed with GitLab's key: only strict parsing stands in the way.
    payload = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    _check(APP.exchange(APP.gitlab.sign_raw(payload)), signed_payload=payload)


def main() -> None:
    """libFuzzer entry point."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
