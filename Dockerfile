# spectroflow's flows and library in one image, for a Docker work pool: `prefect deploy
# --prefect-file deployments/docker.yaml` builds and pushes it (see deployments/README.md), and
# each flow run starts in a container of it, in WORKDIR, where the flows' entrypoints are.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/spectroflow
COPY pyproject.toml README.md ./
COPY src/ src/
COPY flows/ flows/
RUN python -m pip install .
