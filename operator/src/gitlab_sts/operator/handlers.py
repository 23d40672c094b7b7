"""kopf handlers: thin adapters from kopf's callbacks to the Runtime (`kopf run -m gitlab_sts.operator.handlers`)."""

from __future__ import annotations

import logging
import os
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
import yaml
from prometheus_client import start_http_server

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.settings import Settings, parse_settings
from gitlab_sts.operator import metrics
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.kube import Endpoint
from gitlab_sts.operator.runtime import Runtime, build_runtime

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_state: dict[str, Runtime] = {}


def endpoint_from(info: Any) -> Endpoint:
    """Our client's endpoint from kopf's ConnectionInfo (re-reading a rotated service account token)."""
    static = dict(info.as_http_headers())
    ctx: ssl.SSLContext | bool = False if info.insecure else info.as_ssl_context()

    def headers() -> Mapping[str, str]:
        if info.server == "https://kubernetes.default.svc" and SA_TOKEN.exists():
            return {"Authorization": f"Bearer {SA_TOKEN.read_text().strip()}"}
        return static

    return Endpoint(server=str(info.server), ssl_context=ctx, headers=headers)


def runtime() -> Runtime:
    """The running Runtime (after startup)."""
    return _state["runtime"]


def kubeconfig_needs_client(env: Mapping[str, str] | None = None) -> bool:
    """Whether the kubeconfig's current user logs in by exec plugin or auth provider (the client library's job).

    A plain token or certificate is read by kopf's own kubeconfig login, which spares importing the
    `kubernetes` library (~80 MiB of RSS). Anything unclear answers True: the client library decides.
    """
    env = os.environ if env is None else env
    path = Path((env.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")).split(os.pathsep)[0])
    try:
        doc = yaml.safe_load(path.read_text())
        context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
        user = next(u.get("user") or {} for u in doc["users"] if u["name"] == context["user"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration):
        return True
    return not isinstance(user, Mapping) or "exec" in user or "auth-provider" in user


def credentials(settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any]) -> Any:
    """Credentials for kopf and for our client alike: in-cluster service account, else kubeconfig."""
    info = kopf.login_with_service_account(settings=settings)
    if info is None and not kubeconfig_needs_client():
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        try:
            info = kopf.login_via_client(logger=logger, settings=settings)  # exec plugins, OIDC, ...
        except kopf.LoginError:
            info = None
    # The client library reads $KUBECONFIG once at import; kopf's own reader honours it now.
    info = info or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: neither a service account nor a kubeconfig")
    return info


@kopf.on.login()
def login(settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> Any:
    """kopf's login: the same credentials our client uses."""
    return credentials(settings, logger)


class SettingsUnusable(Exception):
    """settings.yaml cannot be read or is invalid: the operator stops (exit code 2) instead of retrying."""


def load_settings(cfg: OperatorConfig) -> Settings:
    """Read and validate settings.yaml; SettingsUnusable with one clear sentence when that fails."""
    try:
        return parse_settings(cfg.settings_file.read_text(), str(cfg.settings_file))
    except OSError as exc:
        raise SettingsUnusable(f"cannot read {cfg.settings_file}: {exc.strerror or exc}") from None
    except (ConfigError, ValueError) as exc:
        raise SettingsUnusable(f"invalid settings: {exc}") from None


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf runs only the lifecycle (login, startup, cleanup, probes): bindings are listed and watched by us.

    Scanning is off: with no resource handlers kopf has nothing to discover, and scanning needs cluster-wide
    reads of CustomResourceDefinitions and Namespaces that the chart does not grant (see operator/README.md).
    """
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING  # kopf's own k8s events only for problems


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any],
                  **_: Any) -> None:
    """Read settings.yaml, log in, start watching bindings, the status workers, writer, key loops and metrics."""
    configure_kopf(settings)
    cfg = OperatorConfig.from_env()
    try:
        app_settings = load_settings(cfg)
    except SettingsUnusable as exc:
        raise kopf.PermanentError(str(exc)) from None
    rt = build_runtime(cfg, app_settings, endpoint_from(credentials(settings, logger)))
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, registry=metrics.REGISTRY)
    await rt.start()
    _state["runtime"] = rt


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    """Stop the loops and flush a pending ConfigMap write."""
    rt = _state.pop("runtime", None)
    if rt is not None:
        await rt.stop()


@kopf.on.probe(id="operator")
def probe(**_: Any) -> dict[str, Any]:
    """Liveness detail; fails when a background loop died."""
    return runtime().healthy()


class QuietSuccess(logging.Filter):
    """kopf logs every handler success at info; ours are routine, so they go to debug (dropped unless verbose)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote "Handler '...' succeeded." records."""
        if record.levelno == logging.INFO and record.name.startswith("kopf") \
                and str(record.msg).startswith("Handler ") and str(record.msg).endswith(" succeeded."):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.verbose
        return True


def quiet_kopf_logs(verbose: bool) -> None:
    """Install QuietSuccess on the root handlers kopf.configure() set up."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuietSuccess(verbose))


def main() -> None:
    """`python -m gitlab_sts.operator`: one standalone replica, JSON logs, liveness endpoint."""
    cfg = OperatorConfig.from_env()
    verbose = bool(os.environ.get("GITLAB_STS_OPERATOR_DEBUG"))
    kopf.configure(log_format=kopf.LogFormat.JSON, verbose=verbose)
    quiet_kopf_logs(verbose)
    try:
        load_settings(cfg)  # fail here, once and clearly, rather than as a kopf handler retried forever
    except SettingsUnusable as exc:
        logging.getLogger("gitlab_sts.operator").critical("operator stopped: %s", exc)
        sys.exit(2)
    kopf.run(standalone=True, clusterwide=not cfg.watch_namespaces, namespaces=cfg.watch_namespaces,
             liveness_endpoint=cfg.liveness_endpoint or None)
