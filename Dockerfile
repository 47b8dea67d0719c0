# syntax=docker/dockerfile:1
# Build: docker build -t channelgate .
# Run:   docker run -p 8080:8080 -v $PWD/policy.yaml:/etc/channelgate/channelgate.yaml \
#                   -v cg-data:/var/lib/channelgate channelgate

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[fast,ui]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/channelgate --create-home channelgate \
    && mkdir -p /etc/channelgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'channelgate[ui]' uvloop && rm -rf /wheels
COPY config/example.yaml /etc/channelgate/example.yaml
USER channelgate
WORKDIR /var/lib/channelgate
VOLUME ["/var/lib/channelgate"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/api/health', timeout=4).status == 200 else 1)"
CMD ["channelgate", "serve", "--config", "/etc/channelgate/channelgate.yaml", "--listen", "0.0.0.0:8080"]
