"""The exchange decision: which binding a verified token gets, or why none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from gitlab_sts.core import admission
from gitlab_sts.core.bindings import SETTINGS_RULE, BindingIndex, Candidate, CompiledBinding, Grant, RuleFailure
from gitlab_sts.core.errors import InvalidRequest, InvalidTarget, UnsupportedGrantType
from gitlab_sts.core.settings import Settings
from gitlab_sts.core.verify import VerifiedToken

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
ISSUED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 (a URN, not a secret)
# An exchange form has at most 7 fields; many more is not a client of this service.
MAX_FORM_FIELDS = 32


@dataclass(frozen=True)
class ExchangeRequest:
    """The RFC 8693 form fields we use, already checked for shape."""

    subject_token: str
    resource: str | None = None
    audience: str | None = None


def _unquote(text: str) -> str:
    # A JWT is base64url and dots: nothing to decode in the common case, so skip the decoder.
    return unquote_plus(text, errors="strict") if "%" in text or "+" in text else text


def parse_urlencoded(body: bytes, *, max_fields: int = MAX_FORM_FIELDS) -> dict[str, list[str]]:
    """Split an application/x-www-form-urlencoded body into its fields (UTF-8, as parse_qsl would)."""
    try:
        text = body.decode("utf-8")
        pairs = [pair.partition("=") for pair in text.split("&") if pair]
        if len(pairs) > max_fields:
            raise InvalidRequest(f"the form has more than {max_fields} fields", reason="bad_form")
        form: dict[str, list[str]] = {}
        for name, _, value in pairs:
            form.setdefault(_unquote(name), []).append(_unquote(value))
    except UnicodeDecodeError:
        raise InvalidRequest("the form is not valid UTF-8", reason="bad_form") from None
    return form


def parse_form(form: dict[str, list[str]]) -> ExchangeRequest:
    """Check an RFC 8693 form (each field once) and return the request (the token's size and shape are
    core.jwtparse's to check)."""
    for name, values in form.items():
        if len(values) > 1:
            raise InvalidRequest(f"parameter {name!r} must be given once", reason="bad_form")

    def one(name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    grant_type = one("grant_type")
    if grant_type is None:
        raise InvalidRequest("missing grant_type", reason="bad_form")
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantType(f"grant_type must be {GRANT_TYPE}")
    token = one("subject_token")
    if not token:
        raise InvalidRequest("missing subject_token", reason="bad_form")
    token_type = one("subject_token_type")
    if token_type not in TOKEN_TYPES:
        raise InvalidRequest(f"subject_token_type must be one of {', '.join(TOKEN_TYPES)}", reason="bad_form")
    if one("actor_token") is not None or one("actor_token_type") is not None:
        raise InvalidRequest("actor tokens are not supported", reason="bad_form")
    resource, audience = one("resource"), one("audience")
    for name, value in (("resource", resource), ("audience", audience)):
        if value is not None and (not value or len(value) > 2048):
            raise InvalidRequest(f"parameter {name!r} must be 1-2048 characters", reason="bad_form")
    return ExchangeRequest(token.strip(), resource, audience)


def parse_duration(form: dict[str, list[str]]) -> int | None:
    """The optional duration_seconds of /v1/credentials, within what AssumeRoleWithWebIdentity accepts."""
    values = form.get("duration_seconds")
    if not values:
        return None
    try:
        value = int(values[0])
    except ValueError:
        value = 0
    if not 900 <= value <= 43200:
        raise InvalidRequest("duration_seconds must be an integer from 900 to 43200", reason="bad_form")
    return value


def role_session_name(claims: dict[str, Any]) -> str:
    """gitlab-<project_id>-<job_id>, within STS's 2-64 characters of [\\w+=,.@-]."""
    return f"gitlab-{claims.get('project_id')}-{claims.get('job_id')}"[:64]


@dataclass(frozen=True)
class Decision:
    """A binding chosen for a verified token, with its grant."""

    binding: CompiledBinding
    grant: Grant


def _grant(b: CompiledBinding, claims: dict[str, Any], settings: Settings) -> Grant | RuleFailure:
    t = settings.tokens
    return b.grant(claims, default_audience=t.audience, default_lifetime=t.lifetime, max_lifetime=t.max_lifetime)


def _tried(candidates: list[Candidate]) -> list[dict[str, Any]]:
    out = []
    for c in candidates:
        row: dict[str, Any] = {"binding": c.binding.key, "role_arn": c.binding.spec.aws.role_arn}
        if c.failure is not None:
            row.update(c.failure.as_dict())
        out.append(row)
    return out


def _refine(c: Candidate, request: ExchangeRequest, claims: dict[str, Any],
            settings: Settings) -> Candidate:
    """Apply the request's resource/audience filters and the grant's own checks to a match."""
    if c.failure is not None:
        return c
    aws = c.binding.spec.aws
    if request.resource and aws.role_arn != request.resource:
        return Candidate(c.binding, RuleFailure("resource", "resource", aws.role_arn, request.resource))
    audience = aws.audience or settings.tokens.audience
    if request.audience and audience != request.audience:
        return Candidate(c.binding, RuleFailure("audience", "audience", audience, request.audience))
    grant = _grant(c.binding, claims, settings)
    if isinstance(grant, RuleFailure):
        return Candidate(c.binding, grant)
    return Candidate(c.binding, None, grant)


def admitted(candidates: list[Candidate], settings: Settings) -> list[Candidate]:
    """Mark the candidates that the settings refuse (issuer rule, platform guard) as failed.

    The index normally holds admitted bindings only; this is the check at the point of minting, so that a
    binding loaded before a tightened guard, or by any other path, cannot mint what the settings forbid.
    """
    rules = admission.for_settings(settings)
    out = []
    for c in candidates:
        refusal = rules.check_binding(c.binding) if c.failure is None else None
        if refusal is not None:
            rule = "guard" if refusal.reason == admission.FORBIDDEN else "issuer"
            c = Candidate(c.binding, RuleFailure(SETTINGS_RULE, rule, "admitted by the settings", refusal.message))
        out.append(c)
    return out


def decide(verified: VerifiedToken, index: BindingIndex, settings: Settings,
           request: ExchangeRequest) -> Decision:
    """Pick the one binding that allows this token, or raise InvalidTarget saying why."""
    claims = verified.claims
    candidates = index.evaluate(verified.instance.issuer, claims)
    project = f"{claims.get('project_path')} (id {claims.get('project_id')})"
    if not candidates:
        raise InvalidTarget(f"no GitLabAWSBinding names project {project}", reason="no_binding")
    candidates = [_refine(c, request, claims, settings) for c in admitted(candidates, settings)]
    matching = [c for c in candidates if c.failure is None]
    if not matching:
        lines = "; ".join(f"{c.binding.key}: {c.failure.sentence()}" for c in candidates if c.failure)
        raise InvalidTarget(
            f"no GitLabAWSBinding of project {project} allows this job: {lines}",
            reason="rule_failed", bindings_tried=_tried(candidates),
        )
    if len(matching) > 1:
        roles = sorted({c.binding.spec.aws.role_arn for c in matching})
        raise InvalidTarget(
            "several bindings match; pass resource=<role ARN> to choose one of: " + ", ".join(roles),
            reason="ambiguous", candidates=[{"binding": c.binding.key, "role_arn": c.binding.spec.aws.role_arn}
                                            for c in matching],
        )
    chosen = matching[0]
    assert chosen.grant is not None
    return Decision(chosen.binding, chosen.grant)


def explain(verified: VerifiedToken, index: BindingIndex, settings: Settings) -> list[dict[str, Any]]:
    """For each binding of the token's project: whether it matches and, if not, the first failed rule."""
    rows = []
    for c in admitted(index.evaluate(verified.instance.issuer, verified.claims), settings):
        failure = c.failure
        row: dict[str, Any] = {"binding": c.binding.key, "role_arn": c.binding.spec.aws.role_arn,
                               "subject": c.binding.subject}
        if failure is None:
            grant = _grant(c.binding, verified.claims, settings)
            if isinstance(grant, RuleFailure):
                failure = grant
            else:
                row.update(matches=True, audience=grant.audience, lifetime=grant.lifetime,
                           session_tags=grant.tags, source_identity=grant.source_identity)
        if failure is not None:
            row.update(matches=False, failed=failure.as_dict(), reason=failure.sentence())
        rows.append(row)
    return rows
