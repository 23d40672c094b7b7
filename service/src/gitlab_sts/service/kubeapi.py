"""A small synchronous Kubernetes API client for the exchange pods: GET, LIST, WATCH and Lease writes.

Standard library only (http.client): the service needs four calls, a bearer token and a CA, in-cluster or
from a kubeconfig whose user has a token (how `make e2e` runs the service as its ServiceAccount).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    """A failed call: a non-2xx answer (status set) or no answer at all (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


@dataclass(frozen=True)
class KubeAccess:
    """Where the API server is and how to authenticate (the token is re-read: projected tokens rotate)."""

    server: str
    token: Callable[[], str]
    ssl_context: ssl.SSLContext | None
    namespace: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KubeAccess:
        """In a pod: the ServiceAccount mount; elsewhere: $KUBECONFIG (current context, token user)."""
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if host and port and (SA_DIR / "token").exists():
            ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
            namespace = (SA_DIR / "namespace").read_text().strip() if (SA_DIR / "namespace").exists() else ""
            server = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
            return cls(server, lambda: (SA_DIR / "token").read_text().strip(), ctx, namespace)
        path = env.get("KUBECONFIG", "").split(os.pathsep)[0]
        if not path:
            raise KubeError(0, "no in-cluster ServiceAccount and no KUBECONFIG")
        return cls.from_kubeconfig(Path(path))

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeAccess:
        """The current context of a kubeconfig whose user authenticates with a token."""
        doc = yaml.safe_load(path.read_text()) or {}

        def named(section: str, name: str) -> dict[str, Any]:
            for item in doc.get(section) or ():
                if item.get("name") == name:
                    return dict(item.get(section[:-1]) or {})
            raise KubeError(0, f"{path}: no {section[:-1]} named {name!r}")

        context = named("contexts", str(doc.get("current-context") or ""))
        cluster = named("clusters", str(context.get("cluster") or ""))
        user = named("users", str(context.get("user") or ""))
        token = user.get("token")
        token_file = user.get("tokenFile")
        if token:
            read: Callable[[], str] = lambda: str(token)  # noqa: E731
        elif token_file:
            read = lambda: Path(token_file).read_text().strip()  # noqa: E731
        else:
            raise KubeError(0, f"{path}: the user of the current context has no token")
        server = str(cluster.get("server") or "")
        ctx: ssl.SSLContext | None = None
        if server.startswith("https"):
            if cluster.get("insecure-skip-tls-verify"):
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif cluster.get("certificate-authority-data"):
                pem = base64.b64decode(cluster["certificate-authority-data"]).decode()
                ctx = ssl.create_default_context(cadata=pem)
            elif cluster.get("certificate-authority"):
                ctx = ssl.create_default_context(cafile=str(cluster["certificate-authority"]))
            else:
                ctx = ssl.create_default_context()
        return cls(server, read, ctx, str(context.get("namespace") or ""))


def object_path(api_version: str, plural: str, namespace: str, name: str | None = None) -> str:
    """The REST path of a namespaced collection or object."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{quote(namespace, safe='')}/{plural}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


class KubeApi:
    """Blocking calls; every call opens its own connection (a watch holds one for its lifetime)."""

    def __init__(self, access: KubeAccess, *, timeout: float = 10.0) -> None:
        self.access = access
        self.timeout = timeout
        parts = urlsplit(access.server)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=self.access.ssl_context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _send(self, method: str, path: str, query: Mapping[str, str] | None, body: Any, content_type: str,
              timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        url = self._prefix + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": "gitlab-sts-exchange",
                   "Authorization": f"Bearer {self.access.token()}"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        conn = self._connect(timeout)
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise KubeError(0, f"{method} {path}: {exc}") from None
        if resp.status >= 300:
            text = resp.read(2000).decode(errors="replace")
            conn.close()
            with contextlib.suppress(ValueError, AttributeError):
                text = str(json.loads(text).get("message") or text)
            raise KubeError(resp.status, f"{method} {path}: {text}")
        return conn, resp

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: Any = None,
                content_type: str = "application/json") -> dict[str, Any]:
        """One call; the decoded JSON answer."""
        conn, resp = self._send(method, path, query, body, content_type, self.timeout)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise KubeError(0, f"{method} {path}: {exc}") from None
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            raise KubeError(0, f"{method} {path}: not JSON") from None
        return doc if isinstance(doc, dict) else {}

    def watch(self, path: str, query: Mapping[str, str], *, read_timeout: float) -> Iterator[dict[str, Any]]:
        """The events of one watch request, until the server ends it or the connection fails (KubeError)."""
        conn, resp = self._send("GET", path, {**query, "watch": "true"}, None, "", read_timeout)
        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise KubeError(0, f"watch {path}: {exc}") from None
                if not line:
                    return
                if line.strip():
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise KubeError(0, f"watch {path}: not JSON") from None
                    if isinstance(event, dict):
                        yield event
        finally:
            conn.close()


def write_atomically(path: Path, data: bytes, *, scratch: Path | None = None) -> None:
    """Replace a file by rename so that a reader sees the old or the new content, never a mix."""
    directory = scratch or path.parent
    directory.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
