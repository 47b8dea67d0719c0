"""Operations files (issue 12): the container's default policy, the compose example and the
Grafana dashboard agree with the code. No container engine runs here, so they are checked
as files: parsed, loaded by channelgate's own policy reader, and held against /metrics."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics
from proxy.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


def test_dockerfile_default_policy_stores_on_the_volume_by_absolute_path() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.search(r"^COPY config/(\S+) /etc/channelgate/channelgate\.yaml$", dockerfile, re.M)
    assert copied, "the image must ship a default policy at the path its CMD reads"
    assert '"--config", "/etc/channelgate/channelgate.yaml"' in dockerfile
    settings = load_settings(CONFIG / copied.group(1))
    volume = re.search(r'^VOLUME \["([^"]+)"\]', dockerfile, re.M)
    assert volume and settings.storage_path == Path(volume.group(1))  # absolute: not under /etc/channelgate
    assert "/api/ready" in dockerfile.split("HEALTHCHECK", 1)[1]


def test_compose_example_has_a_volume_a_health_check_and_metrics() -> None:
    compose = yaml.safe_load((CONFIG / "docker-compose.yml").read_text())
    service = compose["services"]["channelgate"]
    mounts = dict(v.split(":")[:2] for v in service["volumes"])
    assert mounts["channelgate-data"] == "/var/lib/channelgate" and "channelgate-data" in compose["volumes"]
    policy_file = next(src for src, dst in mounts.items() if dst == "/etc/channelgate/channelgate.yaml")
    settings = load_settings(CONFIG / policy_file)
    assert settings.storage_path == Path("/var/lib/channelgate")
    assert settings.metrics_listen is not None
    metrics_port = settings.metrics_listen.rsplit(":", 1)[1]
    assert f"{metrics_port}:{metrics_port}" in [p.split()[0] for p in service["ports"]]
    assert any("/api/ready" in part for part in service["healthcheck"]["test"])
    scrape = yaml.safe_load(compose["configs"]["prometheus"]["content"])
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"channelgate:{metrics_port}"]


def exposed_series() -> set[str]:
    metrics = Metrics()
    metrics.request_done("pypi", 200, 10)
    metrics.cache_result("index", "hit")
    metrics.upstream_request("pypi", 200, 0.1)
    metrics.uploads.labels("pypi").inc()
    return {s.name for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}


def test_grafana_dashboard_queries_only_series_the_server_exposes() -> None:
    dashboard = json.loads((CONFIG / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"channelgate_[a-z_]+", e)}
    assert used and used <= exposed_series(), used - exposed_series()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("by status", "hit ratio", "upstream latency", "upstream errors", "bytes out"):
        assert topic in titles


def test_compose_scale_profile_names_every_engine_and_its_policy_holds_no_secret() -> None:
    """The scale profile (README "Scaling out"): both replicas share PostgreSQL, S3 and Redis;
    passwords come from the compose file's environment, never from the mounted policy."""
    compose = yaml.safe_load((CONFIG / "docker-compose.yml").read_text())
    replica = compose["services"]["replica-1"]
    policy_file = next(v.split(":")[0] for v in replica["volumes"] if v.endswith("/etc/channelgate/channelgate.yaml:ro"))
    settings = load_settings(CONFIG / policy_file)
    assert settings.database_url is not None and "@postgres:" in settings.database_url
    assert settings.storage_backend == "s3" and settings.cache_backend == "redis"
    database = compose["services"]["postgres"]["environment"]
    assert replica["environment"]["PGPASSWORD"] == database["POSTGRES_PASSWORD"]
    assert database["POSTGRES_PASSWORD"] not in (CONFIG / policy_file).read_text()


def test_compose_scale_profile_is_two_replicas_on_the_shared_engines_behind_one_port() -> None:
    """config/docker-compose.yml's `scale` profile (README, "Scaling out"): the policy both
    replicas mount is one channelgate accepts, and it points at the services the file runs."""
    compose = yaml.safe_load((CONFIG / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = [services["replica-1"], services["replica-2"]]
    policies, volumes = set(), set()
    for replica in replicas:
        assert replica["profiles"] == ["scale"]
        mounts = dict(v.split(":")[:2] for v in replica["volumes"])
        policies.add(next(src for src, dst in mounts.items() if dst == "/etc/channelgate/channelgate.yaml"))
        volumes.add(next(src for src, dst in mounts.items() if dst == "/var/lib/channelgate"))
        assert {"redis", "postgres", "minio-bucket"} <= set(replica["depends_on"])
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD"} <= set(replica["environment"])
        assert replica["image"] == services["channelgate"]["image"]  # the image with the s3, redis, postgres extras
    assert len(policies) == 1 and len(volumes) == 2 and volumes <= set(compose["volumes"])  # own disks
    settings = load_settings(CONFIG / policies.pop())
    assert settings.storage_backend == "s3" and settings.s3 is not None
    assert settings.s3.endpoint_url == "http://minio:9000" and settings.s3.access_key_id is None  # from the env
    assert settings.database_url is not None and "@postgres:" in settings.database_url
    assert ":" not in settings.database_url.split("//", 1)[1].split("@", 1)[0]  # no password in the policy
    assert settings.cache_backend == "redis" and settings.redis_url == "redis://redis:6379/0"
    nginx = compose["configs"]["gateway"]["content"]
    assert "server replica-1:8080" in nginx and "server replica-2:8080" in nginx
    listen = re.search(r"listen (\d+);", nginx)
    assert listen and services["gateway"]["ports"] == [f"{listen.group(1)}:{listen.group(1)}"]
    assert "s3/channelgate" in " ".join(services["minio-bucket"]["entrypoint"]) and settings.s3.bucket == "channelgate"
