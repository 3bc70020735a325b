# One image for every GasGuard service; docker-compose.yml picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A CJK font for the printable confirmation slips (PDF) the registry renders.
RUN apt-get update && apt-get install -y --no-install-recommends fonts-wqy-zenhei \
    && rm -rf /var/lib/apt/lists/*

# Services run as an unprivileged user and write only their spools, which the services' relative
# defaults (var/ingest-spool, var/alerting-spool) put under /app/var. The directories exist in the image,
# owned by that user, so named volumes mounted on them start out writable.
RUN groupadd --system --gid 10001 gasguard \
    && useradd --system --uid 10001 --gid gasguard --home-dir /app --shell /usr/sbin/nologin gasguard \
    && mkdir -p /app/var/ingest-spool /app/var/alerting-spool \
    && chown -R gasguard:gasguard /app

# Install the project (all six packages are one distribution) as a regular, non-editable package.
COPY pyproject.toml README.md /tmp/src/
COPY gasguard /tmp/src/gasguard
COPY gateway /tmp/src/gateway
COPY ingest /tmp/src/ingest
COPY alerting /tmp/src/alerting
COPY registry /tmp/src/registry
COPY simulator /tmp/src/simulator
RUN pip install /tmp/src && rm -rf /tmp/src

WORKDIR /app
USER gasguard

# Only the registry listens on HTTP; it must bind all interfaces inside the container.
ENV GG_REGISTRY_HOST=0.0.0.0 \
    GG_REGISTRY_PORT=8000
EXPOSE 8000

CMD ["python", "-m", "registry"]
