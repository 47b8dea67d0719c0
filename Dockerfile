# syntax=docker/dockerfile:1
# Build: docker build -t channelgate .
# Run:   docker run -p 8080:8080 -v cg-data:/var/lib/channelgate channelgate    (default policy: a PyPI mirror)
#        docker run -p 8080:8080 -v $PWD/policy.yaml:/etc/channelgate/channelgate.yaml:ro \
#                   -v cg-data:/var/lib/channelgate channelgate                 (your policy; storage.path absolute)
# Compose with a health check and metrics: config/docker-compose.yml

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# the scale-out engines' clients too (S3, Redis, PostgreSQL): config/docker-compose.yml's scale profile
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[fast,ui,s3,redis,postgres]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/channelgate --create-home channelgate \
    && mkdir -p /etc/channelgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'channelgate[ui,s3,redis,postgres]' uvloop && rm -rf /wheels
COPY config/example.yaml /etc/channelgate/example.yaml
# the default policy: storage under the volume, by absolute path
COPY config/docker.yaml /etc/channelgate/channelgate.yaml
USER channelgate
WORKDIR /var/lib/channelgate
VOLUME ["/var/lib/channelgate"]
EXPOSE 8080
# readiness (storage writable, catalog and Redis reachable): 503, so the check fails, when not ready
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/api/ready', timeout=4).status == 200 else 1)"
CMD ["channelgate", "serve", "--config", "/etc/channelgate/channelgate.yaml", "--listen", "0.0.0.0:8080"]
