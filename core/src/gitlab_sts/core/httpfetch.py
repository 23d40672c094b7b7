"""Bounded GETs of JSON documents that never follow a redirect: GitLab's discovery and JWKS (service),
the doctor's checks of a published issuer, and the local STS's key fetches.

The callers word failures their own way (a 503, a doctor problem, an STS error code); what they share is
here: no redirects, a size limit read without buffering more than the limit, and the JSON-object check.
`gitlab_sts.login` does not use it: it is served to jobs as one standard-library-only file.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: a key set must come from the configured URL, not from wherever that points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Answer the 3xx as an HTTPError instead of following it."""
        return


class TooLarge(Exception):
    """The body is longer than the caller's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


class NotJson(ValueError):
    """The body does not parse as JSON."""


class NotAnObject(ValueError):
    """The body is JSON, but not an object."""


@dataclass(frozen=True)
class Fetched:
    """An HTTP answer that was read completely."""

    status: int
    headers: Message
    body: bytes


def opener(ca_bundle: str | None = None, *, proxies: bool = True) -> urllib.request.OpenerDirector:
    """An opener that trusts ca_bundle (or the system roots), follows no redirect and, optionally, no proxy."""
    handlers: list[urllib.request.BaseHandler] = [
        NoRedirect(), urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_bundle))]
    if not proxies:
        handlers.insert(0, urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def get(via: urllib.request.OpenerDirector, url: str, *, max_bytes: int, timeout: float,
        user_agent: str = "gitlab-sts") -> Fetched:
    """GET url for JSON; HTTPError (3xx included), URLError/OSError/TimeoutError and TooLarge propagate."""
    # Callers pass only http(s) URLs they have checked (settings, discovery with check_fetch_url).
    request = urllib.request.Request(url, headers={"Accept": "application/json",  # noqa: S310
                                                   "User-Agent": user_agent})
    with via.open(request, timeout=timeout) as response:  # noqa: S310
        fetched = Fetched(response.status, response.headers, response.read(max_bytes + 1))
    if len(fetched.body) > max_bytes:
        raise TooLarge(max_bytes)
    return fetched


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; NotJson or NotAnObject (both ValueError) otherwise."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise NotJson from None
    if not isinstance(value, dict):
        raise NotAnObject
    return value
