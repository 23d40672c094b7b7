"""gunicorn settings shared by the container and `gitlab-sts serve` (environment-driven)."""

import os
import shutil
import tempfile

# Prometheus multiprocess mode must be configured before any worker imports prometheus_client.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if not _metrics_dir:
    _metrics_dir = tempfile.mkdtemp(prefix="gitlab-sts-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
else:
    # A restart must not add up counters from a previous run.
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)

wsgi_app = "gitlab_sts.service.app:create_app()"
bind = [os.environ.get("GITLAB_STS_BIND", "0.0.0.0:8080")]
workers = int(os.environ.get("GITLAB_STS_WORKERS", "2"))
# gevent: an idle or slow connection holds a greenlet, not one of a few threads, so no CI job can starve the
# others (issue #12; bench/README.md). The worker adds read deadlines (service/worker.py). gunicorn's gevent
# worker monkey-patches the standard library in each worker before the app is imported. GITLAB_STS_WORKER_CLASS
# exists for the bench's comparison with gthread.
worker_class = os.environ.get("GITLAB_STS_WORKER_CLASS", "gitlab_sts.service.worker.DeadlineGeventWorker")
# Connections one worker holds at once (idle and slow ones included); past it the kernel backlog queues them.
worker_connections = int(os.environ.get("GITLAB_STS_WORKER_CONNECTIONS", "10000"))
threads = int(os.environ.get("GITLAB_STS_THREADS", "2"))  # gthread only (the bench's comparison)
timeout = 30
graceful_timeout = 20
keepalive = 5
# Bodies are small forms; refuse absurd request lines and headers early.
limit_request_line = 8190
limit_request_fields = 50
accesslog = os.environ.get("GITLAB_STS_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("GITLAB_STS_LOG_LEVEL", "info")
certfile = os.environ.get("GITLAB_STS_TLS_CERT") or None
keyfile = os.environ.get("GITLAB_STS_TLS_KEY") or None
# No runtime admin socket: the root filesystem is read-only in the chart, nothing uses it, and every
# instance would otherwise share $HOME/.gunicorn/gunicorn.ctl.
control_socket_disable = True
forwarded_allow_ips = os.environ.get("GITLAB_STS_FORWARDED_ALLOW_IPS", "127.0.0.1")


def _raise_fd_limit(server):  # type: ignore[no-untyped-def]
    """Raise the open-file limit to its hard limit: each held connection is a file descriptor."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            server.log.warning("cannot raise the open-file limit from %s", soft)


def ssl_context(config, default_ssl_context_factory):  # type: ignore[no-untyped-def]
    """Serve a renewed certificate (its Secret files replaced) to new connections without a restart."""
    from gitlab_sts.service.worker import ssl_context as reloading

    return reloading(config, default_ssl_context_factory)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Drop a dead worker's live gauges so metrics stay correct after a restart."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Freeze the loaded app and bindings out of full GC collections (service/gcpolicy.py, issue #6)."""
    from gitlab_sts.service import gcpolicy

    gcpolicy.enable()


def on_starting(server):  # type: ignore[no-untyped-def]
    """Refuse to start (exit 3, each problem printed) when settings, bindings or keys do not load (issue #15)."""
    from gitlab_sts.service.preflight import refuse_start_on_broken_config

    _raise_fd_limit(server)
    refuse_start_on_broken_config()
