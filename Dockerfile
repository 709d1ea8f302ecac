# One image for every osiris process; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY osiris_tasks ./osiris_tasks
COPY workers ./workers
# jemalloc: workers/memory.sh preloads it (LanceDB's freed memory is returned far better).
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*
RUN pip install . && useradd --create-home osiris && mkdir -p /data && chown osiris /data
USER osiris
ENV OSIRIS_LANCEDB_URI=/data/lancedb
CMD ["workers/osiris.default"]
