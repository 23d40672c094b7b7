"""The exchange service's application factory: it assembles the Service and the route blueprints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from flask import Flask

from gitlab_sts.service.audit import configure_logging
from gitlab_sts.service.follow import FollowConfig, FollowerHost, LocalCopy
from gitlab_sts.service.paths import ConfigPaths
from gitlab_sts.service.responses import EXTENSION
from gitlab_sts.service.routes import client, errors, exchange, health, wellknown
from gitlab_sts.service.runtime import Service
from gitlab_sts.service.state import LastGood


def create_app(paths: ConfigPaths | None = None, *, clock: Callable[[], float] = time.time,
               watch: bool = True) -> Flask:
    """Create the exchange service application."""
    configure_logging()
    # Paths given, so Flask does not search the `gitlab_sts` namespace package for them (it would trip over
    # setuptools' editable-install path hook); the app serves no templates, static or instance files.
    here = os.path.dirname(os.path.abspath(__file__))
    app = Flask("gitlab_sts.service", root_path=here, instance_path=here)
    app.config["MAX_CONTENT_LENGTH"] = exchange.MAX_BODY
    app.json.sort_keys = False  # type: ignore[attr-defined]
    paths = paths or ConfigPaths.from_env()
    local: LocalCopy | None = None
    follow = FollowConfig.from_env() if watch else None
    if follow is not None:
        # Follow the config objects through the API into a local folder the workers load from; the mounted
        # volumes seed it and stay the fallback (service/follow.py).
        state = LastGood.for_paths(paths)
        if not state.keeps_secrets:  # the preflight refuses this first; a worker must not copy keys to /tmp
            raise RuntimeError("GITLAB_STS_FOLLOW_API needs GITLAB_STS_STATE_DIR for its copy of the keys Secret")
        local = LocalCopy(state.directory / "api")
        local.seed(paths, marker=str(os.getppid()))
        FollowerHost(follow, local, paths).start()
        paths = local.paths(paths)
    svc = Service(paths, clock=clock, local=local)
    if watch:
        svc.state.start_watcher(tick=svc.update_gauges)
    app.extensions[EXTENSION] = svc
    for module in (exchange, wellknown, health, client, errors):
        app.register_blueprint(module.blueprint)
    app.wsgi_app = exchange.timed(app.wsgi_app)  # type: ignore[method-assign,assignment]  # Flask's documented middleware hook
    return app
