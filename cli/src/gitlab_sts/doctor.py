"""`gitlab-sts doctor --issuer URL`: fetch an issuer's discovery document and JWKS the way AWS does, say what is wrong.

AWS STS reads <issuer>/.well-known/openid-configuration and then its jwks_uri, over https from the
internet, with the certificate checked against public root CAs. This command makes the same requests and
checks what AWS needs (and what this project promises): exit 0 when nothing is wrong, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from gitlab_sts.core import httpfetch
from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import KEYSET_FILE, parse_keyring

PROBLEM, WARNING, OK = "FAIL", "WARN", "ok"
MAX_BYTES = 512 * 1024
TIMEOUT = 5.0  # a third-party measurement puts AWS's own fetch timeout near 5 s
AWS_MAX_KEYS = 100  # per key type (RSA, EC)
GOOD_ALGS = ("RS256", "ES256")
OTHER_AWS_ALGS = ("RS384", "RS512", "ES384", "ES512")
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    level: str
    message: str


@dataclass
class Doctor:
    """The checks, in the order AWS meets them."""

    issuer: str
    ca_bundle: str | None = None
    allow_private: bool = False
    expect_kids: tuple[str, ...] = ()
    keys_dir: Path | None = None
    timeout: float = TIMEOUT
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    findings: list[Finding] = field(default_factory=list)

    def problem(self, message: str) -> None:
        """Something that makes AWS refuse tokens (exit 1)."""
        self.findings.append(Finding(PROBLEM, message))

    def warn(self, message: str) -> None:
        """Something that works today but is fragile."""
        self.findings.append(Finding(WARNING, message))

    def ok(self, message: str) -> None:
        """A check that passed."""
        self.findings.append(Finding(OK, message))

    @property
    def failed(self) -> bool:
        """Whether any problem was found."""
        return any(f.level == PROBLEM for f in self.findings)

    def run(self) -> list[Finding]:
        """Run every check; later checks are skipped when an earlier one makes them meaningless."""
        if not self._url_ok(self.issuer, "the issuer URL"):
            return self.findings
        if self.issuer.endswith("/"):
            self.warn("the issuer URL ends with '/': it must equal the iss of every token exactly, slash included")
        discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = self._get_json(discovery_url, "the discovery document")
        if doc is None:
            return self.findings
        jwks_uri = self._check_discovery(doc)
        if jwks_uri is None or not self._url_ok(jwks_uri, "jwks_uri"):
            return self.findings
        jwks = self._get_json(jwks_uri, "the JWKS")
        if jwks is not None:
            self._check_jwks(jwks)
        return self.findings

    # -- URLs and hosts -------------------------------------------------------------------------------

    def _url_ok(self, url: str, what: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            self.problem(f"{what} {url} must be an https:// URL: AWS fetches keys over https only")
            return False
        if parts.query or parts.fragment:
            self.problem(f"{what} {url} must not have a query or fragment: AWS refuses such provider URLs")
            return False
        try:
            port = parts.port
        except ValueError:
            self.problem(f"{what} {url} has an invalid port")
            return False
        if port not in (None, 443) and not self.allow_private:
            self.problem(f"{what} {url} names a port: AWS IAM OIDC provider URLs must not carry one")
            return False
        host = parts.hostname
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            self.problem(f"{what} {url} uses an IP address: AWS needs a DNS name with a certificate issued for it")
            return False
        return self._host_ok(host, what)

    def _host_ok(self, host: str, what: str) -> bool:
        try:
            infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            self.problem(f"the host {host} of {what} does not resolve in DNS ({exc.strerror or exc}); "
                         "AWS must be able to resolve it from the internet")
            return False
        addresses = sorted({str(info[4][0]) for info in infos})
        private = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_global]
        if private and not self.allow_private:
            self.problem(f"the host {host} of {what} resolves to non-public addresses ({', '.join(private)}): "
                         "AWS fetches from the internet and cannot reach them (publish to S3 or expose an "
                         "Ingress; see docs/publishing.md)")
            return False
        self.ok(f"{host} resolves to {', '.join(addresses)}")
        return True

    # -- fetching -------------------------------------------------------------------------------------

    def _fetch(self, url: str, what: str) -> httpfetch.Fetched | None:
        try:
            return httpfetch.get(httpfetch.opener(self.ca_bundle), url, max_bytes=MAX_BYTES, timeout=self.timeout,
                                 user_agent="gitlab-sts-doctor")
        except httpfetch.TooLarge:
            self.problem(f"{what} at {url} is larger than {MAX_BYTES // 1024} KiB")
            return None
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                self.problem(f"{what} at {url} answered a redirect (HTTP {exc.code} to "
                             f"{exc.headers.get('Location')}): serve it at this exact URL; AWS is not documented "
                             "to follow redirects")
            else:
                self.problem(f"{what} at {url} answered HTTP {exc.code}: AWS needs HTTP 200")
            return None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                self.problem(f"the TLS certificate of {urlsplit(url).hostname} is not trusted "
                             f"({reason.verify_message}): AWS checks it against public root CAs; use a certificate "
                             "from a public CA (or pass --ca-bundle to test with a private one)")
            elif isinstance(reason, ssl.SSLError):
                self.problem(f"TLS with {urlsplit(url).hostname} failed ({reason.reason or reason})")
            elif isinstance(reason, TimeoutError):
                self.problem(f"{what} at {url} did not answer within {self.timeout:g} s")
            else:
                self.problem(f"{what} at {url} is unreachable ({reason})")
            return None
        except TimeoutError:
            self.problem(f"{what} at {url} did not answer within {self.timeout:g} s")
            return None
        except OSError as exc:
            self.problem(f"{what} at {url} is unreachable ({exc})")
            return None

    def _get_json(self, url: str, what: str) -> dict[str, Any] | None:
        fetched = self._fetch(url, what)
        if fetched is None:
            return None
        try:
            doc = httpfetch.json_object(fetched.body)
        except httpfetch.NotJson:
            self.problem(f"{what} at {url} is not JSON")
            return None
        except httpfetch.NotAnObject:
            self.problem(f"{what} at {url} is not a JSON object")
            return None
        self.ok(f"fetched {what} from {url} over verified TLS")
        ctype = fetched.headers.get("Content-Type", "")
        if "json" not in ctype.lower():
            self.warn(f"{what} is served as {ctype or 'no Content-Type'}; serve it as application/json")
        self._check_cache_control(fetched.headers.get("Cache-Control"), what)
        return doc

    def _check_cache_control(self, value: str | None, what: str) -> None:
        if not value:
            self.problem(f"{what} has no Cache-Control header: caches in between (and AWS) may keep an old copy "
                         "for an unknown time; send e.g. 'public, max-age=300'")
            return
        lowered = value.lower()
        ages = [int(part.split("=", 1)[1]) for part in lowered.replace(" ", "").split(",")
                if part.startswith("max-age=") and part.split("=", 1)[1].isdigit()]
        if "no-store" in lowered:
            self.warn(f"{what} is sent with Cache-Control: {value}; every token check may refetch it")
        elif ages and ages[0] > 86400:
            self.warn(f"{what} may be cached for {ages[0]} s (Cache-Control: {value}); a new key then reaches AWS "
                      "late: keep max-age well under the key pre-publication lead")
        else:
            self.ok(f"{what} has Cache-Control: {value}")

    # -- documents ------------------------------------------------------------------------------------

    def _check_discovery(self, doc: dict[str, Any]) -> str | None:
        issuer = doc.get("issuer")
        if issuer != self.issuer:
            self.problem(f"the discovery document's issuer is {issuer!r}, not {self.issuer!r}: they must be equal "
                         "character for character (AWS matches the token's iss against the provider URL)")
        else:
            self.ok("the discovery document's issuer equals the URL")
        for name in ("response_types_supported", "subject_types_supported", "id_token_signing_alg_values_supported"):
            if name not in doc:
                self.warn(f"the discovery document lacks {name} (required by OpenID Connect Discovery)")
        algs = doc.get("id_token_signing_alg_values_supported")
        if isinstance(algs, list) and not any(a in GOOD_ALGS for a in algs):
            self.warn(f"id_token_signing_alg_values_supported is {algs}: AWS verifies RS256 and ES256 for sure")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            self.problem("the discovery document has no jwks_uri: AWS cannot find the keys")
            return None
        return jwks_uri

    def _check_jwks(self, jwks: dict[str, Any]) -> None:
        keys = jwks.get("keys")
        if not isinstance(keys, list) or not keys:
            self.problem("the JWKS has no keys: AWS cannot verify any token")
            return
        counts = {"RSA": 0, "EC": 0}
        kids: list[str] = []
        for i, key in enumerate(keys):
            if not isinstance(key, dict):
                self.problem(f"JWKS entry {i} is not an object")
                continue
            self._check_key(i, key, len(keys), counts)
            if isinstance(key.get("kid"), str):
                kids.append(key["kid"])
        dupes = sorted({k for k in kids if kids.count(k) > 1})
        if dupes:
            self.problem(f"the JWKS publishes the kid(s) {', '.join(dupes)} more than once")
        for kty, n in counts.items():
            if n > AWS_MAX_KEYS:
                self.problem(f"the JWKS holds {n} {kty} keys; AWS reads at most {AWS_MAX_KEYS}")
            elif n > AWS_MAX_KEYS // 2:
                self.warn(f"the JWKS holds {n} {kty} keys, close to AWS's limit of {AWS_MAX_KEYS}")
        self.ok(f"the JWKS holds {len(keys)} key(s): {', '.join(kids) or '(no kids)'}")
        self._check_expected(set(kids))

    def _check_key(self, i: int, key: dict[str, Any], total: int, counts: dict[str, int]) -> None:
        name = f"key {key.get('kid', i)!s}"
        leaked = [m for m in PRIVATE_MEMBERS if m in key]
        if leaked:
            self.problem(f"{name} publishes PRIVATE key material ({', '.join(leaked)}): remove it from the JWKS and "
                         "replace the key at once; anyone can sign tokens with it")
        kty = key.get("kty")
        if kty not in counts:
            self.problem(f"{name} has kty {kty!r}: AWS verifies RSA and EC keys only")
            return
        counts[str(kty)] += 1
        alg = key.get("alg")
        if alg is not None and alg not in GOOD_ALGS:
            if alg in OTHER_AWS_ALGS:
                self.warn(f"{name} is for {alg}; RS256 or ES256 work with every AWS SDK and region")
            else:
                self.problem(f"{name} is for {alg!r}: AWS accepts RSA (RS256/384/512) and ECDSA (ES256/384/512) only")
        if key.get("use") not in (None, "sig"):
            self.problem(f"{name} has use {key.get('use')!r}; a signing key needs use 'sig' (or none)")
        if "key_ops" in key:
            self.warn(f"{name} carries key_ops; AWS has been reported to reject such keys")
        if "kid" not in key and total > 1:
            self.problem(f"{name} has no kid while the JWKS holds several keys: AWS cannot pick the right one")
        if kty == "RSA" and isinstance(key.get("n"), str):
            bits = len(key["n"].rstrip("=")) * 6  # base64url characters carry 6 bits each
            if bits < 2040:
                self.problem(f"{name} is an RSA key of about {bits} bits; use at least 2048")
        if kty == "EC" and alg == "ES256" and key.get("crv") != "P-256":
            self.problem(f"{name} is for ES256 but its curve is {key.get('crv')!r}, not P-256")

    def _check_expected(self, published: set[str]) -> None:
        wanted: dict[str, str] = {kid: "expected (--expect-kid)" for kid in self.expect_kids}
        if self.keys_dir is not None:
            path = self.keys_dir / KEYSET_FILE if self.keys_dir.is_dir() else self.keys_dir
            try:
                ring = parse_keyring(path.read_text(), str(path))
            except (OSError, ConfigError) as exc:
                self.problem(f"cannot read the key set {path}: {exc}")
                return
            signing = ring.signing_key(self.now)
            for k in ring.published(self.now):
                role = "signing now" if signing and k.kid == signing.kid else (
                    "signs from " + k.activate_at.strftime("%Y-%m-%dT%H:%M:%SZ") if k.activate_at > self.now
                    else "retired, its tokens may still be live")
                wanted[k.kid] = role
        missing = {kid: role for kid, role in wanted.items() if kid not in published}
        for kid, role in missing.items():
            self.problem(f"the JWKS lacks key {kid} ({role}): tokens signed with it fail at AWS with "
                         "\"Couldn't retrieve verification key from your identity provider\"")
        if wanted and not missing:
            self.ok(f"every expected key is published ({len(wanted)})")


def report(findings: Sequence[Finding], issuer: str, out: TextIO) -> None:
    """Print the findings, then one summary line."""
    for f in findings:
        print(f"{f.level:4} {f.message}", file=out)
    problems = sum(f.level == PROBLEM for f in findings)
    warnings = sum(f.level == WARNING for f in findings)
    verdict = "AWS can use this issuer" if not problems else "AWS cannot use this issuer as it is"
    print(f"{issuer}: {problems} problem(s), {warnings} warning(s): {verdict}", file=out)


def run_doctor(args: argparse.Namespace) -> int:
    """Run `gitlab-sts doctor`; 0 when nothing is wrong, 1 otherwise."""
    doctor = Doctor(args.issuer, ca_bundle=args.ca_bundle, allow_private=args.allow_private,
                    expect_kids=tuple(args.expect_kid or ()), keys_dir=args.keys, timeout=args.timeout)
    findings = doctor.run()
    if args.json:
        json.dump({"issuer": args.issuer, "ok": not doctor.failed,
                   "findings": [{"level": f.level, "message": f.message} for f in findings]}, sys.stdout, indent=2)
        print()
    else:
        report(findings, args.issuer, sys.stdout)
    return 1 if doctor.failed else 0


def add_doctor_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `doctor` on the gitlab-sts command line."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor", help="check that AWS can fetch an issuer's discovery document and keys",
        description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--issuer", required=True, help="the issuer URL exactly as in settings (and in tokens)")
    parser.add_argument("--ca-bundle", help="trust this CA file instead of the public roots (testing only)")
    parser.add_argument("--allow-private", action="store_true",
                        help="accept a host with private or loopback addresses and a port (testing only)")
    parser.add_argument("--keys", type=Path, help="a keys folder or keyset.json: every key it publishes now must be "
                                                  "in the JWKS")
    parser.add_argument("--expect-kid", action="append", metavar="KID", help="a kid that must be published "
                                                                             "(repeatable)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per request (default 5)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(func=run_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m gitlab_sts.doctor`)."""
    parser = argparse.ArgumentParser(prog="gitlab-sts")
    add_doctor_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
