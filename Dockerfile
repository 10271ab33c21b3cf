# sonomask container images, one target per kind of node:
#   docker build --target cpu -t sonomask:0.1.0-cpu .   ONNX Runtime on CPU (the default backend)
#   docker build --target gpu -t sonomask:0.1.0-gpu .   PyTorch on an NVIDIA GPU
# Both run as a non-root user, take every setting from SONOMASK_* environment variables,
# carry the default model (service/models/) and download nothing at run time. The root
# filesystem may be mounted read-only as long as /tmp is writable.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The CUDA user-space libraries come with the PyTorch wheels; this base adds the NVIDIA
# container runtime's environment, and the host provides the driver.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# ---------------------------------------------------------------------------------------
# wheel: the project as a wheel. It must contain the default model and every other file
# of service/models (the self-test frame, model cards), or the build stops here.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -c "import glob, os, sys, zipfile; \
names = set(zipfile.ZipFile(glob.glob('/wheels/sonomask-*.whl')[0]).namelist()); \
wanted = {p for p in glob.glob('service/models/**', recursive=True) if os.path.isfile(p)}; \
wanted |= {'service/models/sonomask-demo-n.pt', 'service/models/sonomask-demo-n.onnx'}; \
missing = sorted(wanted - names); \
sys.exit('missing from the wheel (add them to package-data): %s' % missing if missing else 0)"

# ---------------------------------------------------------------------------------------
# gpu: PyTorch's CUDA wheels from PyPI (the default build there for Linux x86_64) on a CUDA
# base image with Ubuntu's Python.
FROM ${CUDA_IMAGE} AS gpu-base
# Ubuntu versions are not pinned, for the same reason as in the cpu target below. Ubuntu
# 24.04 names GLib's package libglib2.0-0t64 (the 64-bit time_t rebuild).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0t64 \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-venv
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
# NOTE: check that the CUDA version of these wheels is supported by your nodes' driver;
# set TORCH_INDEX_URL to a PyTorch CUDA index (for example .../whl/cu128) to pick another.
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/sonomask-*.whl

FROM gpu-base AS gpu
RUN groupadd --system --gid 10001 sonomask \
    && useradd --system --uid 10001 --gid sonomask --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sonomask
COPY --from=gpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SONOMASK_HOST=0.0.0.0 \
    SONOMASK_PORT=8000 \
    SONOMASK_DEVICE=cuda \
    SONOMASK_BACKEND=torch
RUN python -c "import service.app; from service.config import DEFAULT_MODEL_PATH as p; \
assert p.is_file(), p" \
    && rm -rf /tmp/*
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SONOMASK_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["sonomask"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------
# cpu (the default target, built by a plain `docker build .`): CPU wheels of PyTorch (from the PyTorch CPU index), then the project and the rest
# of its dependencies from PyPI.
FROM ${PYTHON_IMAGE} AS cpu-venv
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=wheel /wheels /wheels
# NOTE: dependencies other than torch are resolved at build time from the ranges in
# pyproject.toml, so two builds can differ; a lock file would make them reproducible.
RUN pip install --no-cache-dir /wheels/sonomask-*.whl

FROM ${PYTHON_IMAGE} AS cpu
# opencv-python (pulled in by ultralytics) links against libGL and GLib. Debian versions are
# not pinned because the archive replaces them with security updates, after which a pinned
# version no longer installs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sonomask \
    && useradd --system --uid 10001 --gid sonomask --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sonomask
COPY --from=cpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    MPLCONFIGDIR=/tmp/matplotlib \
    SONOMASK_HOST=0.0.0.0 \
    SONOMASK_PORT=8000 \
    SONOMASK_DEVICE=cpu \
    SONOMASK_BACKEND=onnx
# Fail the build, not the first start, when the model or an import is broken.
RUN python -c "import service.app; from service.config import DEFAULT_MODEL_PATH as p; \
assert p.is_file() and p.with_suffix('.onnx').is_file(), p" \
    && rm -rf /tmp/*
USER 10001:10001
EXPOSE 8000
# /readyz answers 200 once the model is loaded and the start-up self-test passed; any
# other answer or no answer makes urlopen raise, so python exits 1 (unhealthy).
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SONOMASK_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["sonomask"]
CMD ["serve"]
