"""GET /v1/client/login.py: the stdlib-only job client, so a job needs only curl and python3 (issue #15)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from gitlab_sts.service.client import CLIENT_PATH, job_client

blueprint = Blueprint("client", __name__)


@blueprint.get(CLIENT_PATH)
def login_py() -> Response:
    """The job client's source with its sha256 (header, Repr-Digest, ETag); a matching If-None-Match gets 304."""
    client = job_client()
    headers = {
        client.SHA256_HEADER: client.sha256,
        "Repr-Digest": client.repr_digest,  # RFC 9530
        "ETag": client.etag,
        # Revalidate each time: the file changes with the deployed version, and the ETag makes that cheap.
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if request.if_none_match.contains(client.etag.strip('"')):
        return Response(status=304, headers=headers)
    return Response(client.source, mimetype="text/x-python", headers=headers)
