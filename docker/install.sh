#!/bin/sh
# Build the runtime virtualenv from the project's wheel: `install.sh VENV WHEEL...`.
# The Dockerfile's builder stage runs it; tests/chart/test_image.py runs the same script (pointing pip at a
# local wheelhouse through PIP_* variables) so that the image's install steps are tested without Docker.
set -eu
venv="$1"
shift
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check "$@"
# The entrypoint must find both programs and the shipped gunicorn settings.
"$venv/bin/python" - <<'PY'
import importlib.util
import pathlib
import shutil
import sys

spec = importlib.util.find_spec("gitlab_sts.service")
conf = pathlib.Path(spec.submodule_search_locations[0]) / "gunicorn.conf.py"
if not conf.is_file():
    sys.exit(f"{conf} is missing from the wheel")
bindir = pathlib.Path(sys.executable).parent
for exe in ("gunicorn", "kopf", "gitlab-sts"):
    if not (bindir / exe).exists():
        sys.exit(f"{exe} is missing from {bindir}")
print(f"gunicorn settings: {conf}")
PY
