"""What AWS reads: the OIDC discovery document and the public signing keys."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gitlab_sts.core.errors import TemporarilyUnavailable
from gitlab_sts.core.publishing import discovery_document
from gitlab_sts.service.responses import current_service

# AWS re-reads these on its own schedule; five minutes keeps a rotated key's publication prompt.
CACHE_CONTROL = "public, max-age=300"

blueprint = Blueprint("wellknown", __name__)


@blueprint.get("/.well-known/openid-configuration")
def discovery() -> Response:
    """OIDC discovery: the same document the operator uploads to S3 (core.publishing)."""
    svc = current_service()
    snap = svc.snapshot()
    if snap.settings is None:
        raise TemporarilyUnavailable("settings are not loaded", reason="not_ready")
    # The algorithms of the published keys, not the configured one: during a switch both types are published.
    algorithms = snap.keys.algorithms(svc.now()) if snap.keys else []
    response = jsonify(discovery_document(snap.settings.issuer, algorithms))
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response


@blueprint.get("/.well-known/jwks.json")
def jwks() -> Response:
    """The public keys whose publication window is open."""
    svc = current_service()
    keys = svc.snapshot().keys
    if keys is None:
        raise TemporarilyUnavailable("signing keys are not loaded", reason="not_ready")
    response = jsonify(keys.jwks(svc.now()))
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response
