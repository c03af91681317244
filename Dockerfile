# The fleet-dispatch image: the operator (`fleetdispatch operator`) and the supervisor sidecar it injects
# into session pods (`fleetdispatch supervise`), one package, one image.
#
#   docker build -t ghcr.io/fleet-dispatch/fleet-dispatch:0.1.0 .
#
# The build context is the repository root; .dockerignore lets in only what `pip install .` reads.
# The base is a build argument, BASE_IMAGE:BASE_TAG: any Debian-like image with Python 3.11+ as `python`, venv
# and useradd. `make image` passes a debootstrapped Debian built here (scripts/images.sh), where no image can
# be pulled.
ARG BASE_IMAGE=python
ARG BASE_TAG=3.11-slim

FROM ${BASE_IMAGE}:${BASE_TAG} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY crds/ crds/
COPY operator/ operator/
# A virtual environment, copied whole into the final image: no build tree, no pip cache there.
RUN python -m venv /opt/fleet-dispatch \
    && /opt/fleet-dispatch/bin/pip install --no-cache-dir . \
    && /opt/fleet-dispatch/bin/pip uninstall --yes pip setuptools \
    && /opt/fleet-dispatch/bin/python -m compileall -q /opt/fleet-dispatch

FROM ${BASE_IMAGE}:${BASE_TAG}
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK; the chart probes the operator's /healthz, and the supervisor sidecar is judged by the operator.
LABEL org.opencontainers.image.title="fleet-dispatch" \
      org.opencontainers.image.description="The fleet-dispatch operator and its session supervisor" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user for the numeric UID the chart and the operator use (runAsUser 65532), without a home.
RUN groupadd --system --gid 65532 fleet \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fleet
COPY --from=build /opt/fleet-dispatch /opt/fleet-dispatch
ENV PATH=/opt/fleet-dispatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# Session pods run `fleetdispatch supervise` as the supervisor's command; the chart runs `operator`.
ENTRYPOINT ["fleetdispatch"]
CMD ["--help"]
