# syntax=docker/dockerfile:1
# gitlab-sts image: one image, two entrypoints (`service`, `operator`); see docker/entrypoint.sh.
# Build: docker build -t gitlab-sts:0.1.0 .
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK; the chart's probes check /readyz, /healthz (service, HTTPS) and kopf's /healthz (operator)

# Builder: the project's wheel, then a virtualenv with it and its dependencies (pip cache kept between builds).
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli/src/ cli/src/
COPY core/src/ core/src/
COPY service/src/ service/src/
COPY operator/src/ operator/src/
COPY docker/install.sh /usr/local/bin/gitlab-sts-install
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir /wheels . \
 && sh /usr/local/bin/gitlab-sts-install /opt/venv /wheels/gitlab_sts-*.whl

# Runtime: no compilers, no build tools, no source tree; a fixed non-root UID that the chart also uses.
# GITLAB_STS_CLIENT: the stdlib-only job client, the file the service serves at GET /v1/client/login.py.
# The same base as the builder: the venv's interpreter symlinks point into it.
FROM python:3.11-slim
ARG UID=10001
LABEL org.opencontainers.image.title="gitlab-sts" \
      org.opencontainers.image.description="Exchange GitLab CI ID tokens for short-lived AWS credentials" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GITLAB_STS_GUNICORN_CONF=/opt/venv/lib/python3.11/site-packages/gitlab_sts/service/gunicorn.conf.py \
    GITLAB_STS_CLIENT=/opt/venv/lib/python3.11/site-packages/gitlab_sts/login.py \
    GITLAB_STS_CONFIG_DIR=/etc/gitlab-sts
RUN groupadd --system --gid "${UID}" gitlab-sts \
 && useradd --system --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gitlab-sts
COPY --from=builder /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/gitlab-sts-entrypoint
USER ${UID}:${UID}
WORKDIR /tmp
# 8443: exchange service; 8080: operator liveness; 9090: operator metrics.
EXPOSE 8443 8080 9090
ENTRYPOINT ["/usr/local/bin/gitlab-sts-entrypoint"]
CMD ["service"]
