# One image runs any of the five services: the command names the module.
#   docker build -t imx:dev .
#   docker run --rm imx:dev services.ingest          # or services.routing, .deid, .delivery, .audit
#   docker run --rm imx:dev services.cli.main --help  # the `imx` admin CLI
# Settings are IMX_* environment variables (services/common/settings.py and each service's settings.py).
# The services bind 127.0.0.1 by default: in a container set IMX_GRPC_HOST (and ingest's IMX_DICOM_HOST,
# IMX_HTTP_HOST, audit's IMX_HTTP_HOST) to 0.0.0.0, as docker-compose.yml and the Helm chart do.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: dependencies and generated protobuf code ------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Runtime dependencies only, read from pyproject.toml and pinned by constraints.txt. The project itself
# is not pip-installed: its wheel would lack services/deid/data/*.csv (no package-data is declared), so
# the source tree is copied instead (below). Binary wheels only: the final image has no compiler.
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
 && python -m venv --without-pip /opt/imx \
 && python -m pip --python /opt/imx/bin/python install --only-binary=:all: -c constraints.txt -r requirements.txt

# grpcio-tools is a build tool: it lives in a throw-away venv of this stage and never reaches the image.
RUN python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install --only-binary=:all: -c constraints.txt grpcio-tools

COPY proto/ proto/
COPY tools/gen_proto.py tools/gen_proto.py
COPY services/ services/
# .dockerignore keeps a developer's services/proto_gen out of the context: the code is always generated
# here, from proto/, with the pinned grpcio-tools. Byte code is compiled now because the final root
# filesystem is read-only; unchecked-hash .pyc files stay valid whatever the files' timestamps.
RUN /opt/protoc/bin/python tools/gen_proto.py \
 && /opt/imx/bin/python -m compileall -q --invalidation-mode unchecked-hash services

# --- final: the runtime only ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="imx" \
      org.opencontainers.image.description="imx medical-image exchange services (ingest, routing, deid, delivery, audit)" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid/gid so Kubernetes' runAsUser/fsGroup and the compose file can name it (10001: outside the
# range of distribution users). The blob directory and audit's state directory (its signing key) exist
# and belong to it, so a fresh named volume mounted there inherits that owner.
RUN groupadd --system --gid 10001 imx \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin imx \
 && mkdir -p /var/lib/imx/blobs /var/lib/imx/audit \
 && chown 10001:10001 /var/lib/imx/blobs /var/lib/imx/audit

# Code and dependencies belong to root and are read-only to the service user.
COPY --from=builder /opt/imx /opt/imx
COPY --from=builder /src/services /app/services

# As `make run` runs the services (PROCESS_ENV in tools/services_stack.py): glibc keeps blocks up to 32 MB in
# the heap and trims only beyond 256 MB, so multi-MB DICOM buffers are plain copies, not fresh mmap'd pages;
# numpy's OpenBLAS starts one thread, not one per core of the node.
ENV PATH=/opt/imx/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=33554432 \
    MALLOC_TRIM_THRESHOLD_=268435456 \
    OPENBLAS_NUM_THREADS=1 \
    IMX_BLOB_DIR=/var/lib/imx/blobs

WORKDIR /app
USER 10001:10001

# DICOM C-STORE, ingest STOW-RS, audit HTTP, gRPC of ingest/routing/deid/delivery/audit.
EXPOSE 11112 8041 8045 15051 15052 15053 15054 15055

ENTRYPOINT ["python", "-m"]
CMD ["services.cli.main", "--help"]
