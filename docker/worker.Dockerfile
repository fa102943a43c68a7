# syntax=docker/dockerfile:1
# Scoring worker: `python -m workers`, with the example model repository built in.
#   docker build -f docker/worker.Dockerfile -t nearline-worker:0.1.0 .
#   GPU nodes: add --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cuXXX
#   (a CUDA variant published for the pinned torch) and tag it 0.1.0-cuda.
# No CUDA base image is needed: the CUDA torch wheels carry the CUDA runtime libraries, and the
# node's NVIDIA container runtime mounts the driver. Not built in this repository's CI (no
# container engine there); see docs/kubernetes.md.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# HF_*/TRANSFORMERS_OFFLINE: the MiniLM weights ship inside a pip package; never reach for a hub.
# NVIDIA_DRIVER_CAPABILITIES: the driver parts the NVIDIA runtime exposes (ignored on CPU nodes).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app

# torch first, from the chosen wheel index, at the version requirements-worker.txt pins; the
# second install then finds it satisfied instead of pulling PyPI's multi-GB default build.
COPY requirements.txt requirements-worker.txt ./
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==$(sed -n 's/^torch==//p' requirements-worker.txt)" \
 && pip install -r requirements-worker.txt

COPY pyproject.toml README.md ./
COPY nearline ./nearline
COPY workers ./workers
COPY orchestrations ./orchestrations
RUN pip install --no-deps .

# The model repository (Triton layout) is part of the image: the image tag versions code and
# models together, and the Triton pod copies it from here (k8s/overlays/azure/triton.yaml).
RUN nearline models build --out /opt/nearline/models

RUN groupadd --system --gid 10001 nearline \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/nearline nearline
USER 10001:10001

ENV NEARLINE_MODELS=/opt/nearline/models
EXPOSE 8081
ENTRYPOINT ["python", "-m", "workers"]
