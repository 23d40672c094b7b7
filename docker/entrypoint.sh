#!/bin/sh
# Container entrypoint. `service`: the exchange service (gunicorn with the shipped gunicorn.conf.py, which
# names the WSGI app and reads GITLAB_STS_* variables). `operator`: the kopf operator (standalone, settings
# from GITLAB_STS_* variables). Anything else runs as given, e.g. `gitlab-sts check ...`.
set -eu
command="${1:-service}"
if [ "$#" -gt 0 ]; then
  shift
fi
case "$command" in
  service)
    conf="${GITLAB_STS_GUNICORN_CONF:-}"
    if [ -z "$conf" ]; then
      conf="$(python -c 'import importlib.util as u; print(u.find_spec("gitlab_sts.service").submodule_search_locations[0])')/gunicorn.conf.py"
    fi
    exec gunicorn --config "$conf" "$@"
    ;;
  operator)
    # `python -m gitlab_sts.operator` is kopf.run() with the namespaces, liveness endpoint and JSON
    # logging taken from the environment the chart sets.
    exec python -m gitlab_sts.operator "$@"
    ;;
  *)
    exec "$command" "$@"
    ;;
esac
