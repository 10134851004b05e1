# syntax=docker/dockerfile:1
# shardflow: one image for every role. The command picks the role:
#   docker run shardflow ingest     front end only (N of these behind a load balancer)
#   docker run shardflow consume    per-shard consumers (M of these; leases share the shards)
#   docker run shardflow run        everything in one container (embedded stream + SQLite)
# All configuration comes from SHARDFLOW_* variables (see docs/configuration.md).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: wheels for shardflow and every dependency --------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY processor ./processor
COPY shard_consumer ./shard_consumer
COPY sinks ./sinks
RUN python -m pip wheel --wheel-dir /wheels .

# ---- final: the wheels installed into a venv, no compiler, no source tree, not root -----------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="shardflow" \
      org.opencontainers.image.description="HTTP ingest -> Kinesis-style stream -> per-shard consumers -> SQL warehouse, exactly once" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/shardflow/bin:$PATH
RUN groupadd --system --gid 10001 shardflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/shardflow --create-home \
            --shell /usr/sbin/nologin shardflow
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/shardflow \
 && /opt/shardflow/bin/python -m pip install --no-index --find-links /wheels shardflow
USER 10001:10001
WORKDIR /var/lib/shardflow
ENV SHARDFLOW_HOST=0.0.0.0 \
    SHARDFLOW_PORT=8080 \
    SHARDFLOW_DATA_DIR=/var/lib/shardflow
VOLUME ["/var/lib/shardflow"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SHARDFLOW_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["shardflow"]
CMD ["run"]
