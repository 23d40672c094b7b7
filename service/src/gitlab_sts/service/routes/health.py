"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gitlab_sts.service import metrics
from gitlab_sts.service.responses import current_service

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """Liveness: the worker answers."""
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> Response:
    """Readiness: settings, bindings and a signing key loaded (503 otherwise), with details."""
    ready, detail = current_service().readiness()
    response = jsonify(detail)
    response.status_code = 200 if ready else 503
    return response


@blueprint.get("/metrics")
def metrics_route() -> Response:
    """Prometheus text of every worker."""
    current_service().update_gauges()
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
