"""The job client this service hands out: cli/src/gitlab_sts/login.py, read as a file, never imported."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

CLIENT_PATH = "/v1/client/login.py"
# The module whose file is served. Found by name, not imported: the service imports none of the commands
# (import-linter), and login.py must stay runnable on its own with the standard library only.
CLIENT_MODULE = "gitlab_sts.login"


@dataclass(frozen=True)
class JobClient:
    """The served file and its digests."""

    SHA256_HEADER: ClassVar[str] = "X-Gitlab-Sts-Client-Sha256"

    source: bytes
    path: Path

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the file, as `sha256sum` prints it."""
        return hashlib.sha256(self.source).hexdigest()

    @property
    def repr_digest(self) -> str:
        """The RFC 9530 Repr-Digest field value."""
        return "sha-256=:" + base64.b64encode(hashlib.sha256(self.source).digest()).decode() + ":"

    @property
    def etag(self) -> str:
        """A strong ETag derived from the content."""
        return f'"sha256-{self.sha256}"'

    def summary(self) -> dict[str, str]:
        """What /readyz shows: where to fetch the client and what its sha256 must be."""
        return {"path": CLIENT_PATH, "sha256": self.sha256}


@functools.cache
def job_client() -> JobClient:
    """The installed login.py (read once per process: it changes only with a new deployment)."""
    spec = importlib.util.find_spec(CLIENT_MODULE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{CLIENT_MODULE} is not installed next to the service")
    path = Path(spec.origin)
    return JobClient(path.read_bytes(), path)
