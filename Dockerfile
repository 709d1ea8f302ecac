# One image for every osiris process; docker-compose.yml picks the command. Installed with
# constraints.txt: the versions CI tested. Targets: `worker` (the default: workers, bridge,
# sidecar, simulator) and `dashboard` (the same plus Flower, for the flower service).
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# jemalloc: workers/memory.sh preloads it (LanceDB's freed memory is returned far better).
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md constraints.txt ./
COPY osiris_tasks ./osiris_tasks
COPY workers ./workers
RUN pip install -c constraints.txt . && useradd --create-home osiris \
    && mkdir -p /data && chown osiris /data
ENV OSIRIS_LANCEDB_URI=/data/lancedb

FROM base AS dashboard
RUN pip install -c constraints.txt '.[dashboard]'
USER osiris
CMD ["celery", "-A", "osiris_tasks", "flower"]

FROM base AS worker
USER osiris
CMD ["workers/osiris.default"]
