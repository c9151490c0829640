# syntax=docker/dockerfile:1
# LinkFlow Stream engine image. Used by docker-compose.yml for both the one-shot
# `linkflow topics apply` and the long-running `linkflow run`. Without Docker: `make run`.
# The web UI's one third-party file (the DAG layout library), from the npm registry, pinned by
# ui/package-lock.json (ADR 0038); `make ui` does the same outside Docker.
FROM node:20-slim AS ui
WORKDIR /ui
COPY ui/package.json ui/package-lock.json ./
RUN npm ci --no-audit --no-fund \
    && sed -i '/^\/\/# sourceMappingURL=/d' node_modules/@dagrejs/dagre/dist/dagre.esm.js

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# curl serves the container healthcheck (GET /healthz); the slim image has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl bubblewrap \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 linkflow \
    && useradd --system --uid 10001 --gid linkflow --home-dir /home/linkflow --create-home \
       --shell /usr/sbin/nologin linkflow

WORKDIR /app

# Dependencies first, in their own layer, so editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
COPY --from=ui /ui/node_modules/@dagrejs/dagre/dist/dagre.esm.js linkflow_stream/http/assets/ui/
COPY --from=ui /ui/node_modules/@dagrejs/dagre/LICENSE linkflow_stream/http/assets/ui/dagre.LICENSE.txt
RUN pip install . \
    && rm -rf build ./*.egg-info

# The engine finds schemas/ and topics/topics.toml next to its package directory
# (Path(__file__).parent.parent), which a site-packages install does not carry; importing the
# package from /app keeps those paths valid. The installed copy provides the `linkflow` script.
ENV PYTHONPATH=/app \
    LINKFLOW_DATA_DIR=/var/lib/linkflow

RUN mkdir -p /var/lib/linkflow && chown linkflow:linkflow /var/lib/linkflow

USER linkflow

# 8084: execution API (/healthz, /metrics); 8085: worker registry API.
EXPOSE 8084 8085

CMD ["linkflow", "run"]
