# syntax=docker/dockerfile:1
# HTTP API: `nearline serve --no-workers`. Light on purpose: requirements.txt only (no torch,
# no model stack); the workers do the scoring.
#   docker build -f docker/api.Dockerfile -t nearline-api:0.1.0 .
# Not built in this repository's CI (no container engine there); see docs/kubernetes.md.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY nearline ./nearline
COPY workers ./workers
COPY orchestrations ./orchestrations
RUN pip install --no-deps .

RUN groupadd --system --gid 10001 nearline \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/nearline nearline
USER 10001:10001

EXPOSE 7071
ENTRYPOINT ["nearline", "serve"]
CMD ["--host=0.0.0.0", "--port=7071", "--no-workers"]
