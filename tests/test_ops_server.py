"""Operations (DESIGN "Operations", issue 12): TLS, `channelgate reload`, log options,
liveness vs readiness, --workers metrics and server.metrics_listen."""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from fixtures.certs import make_cert
from fixtures.wheels import make_wheel, write_simple_index
from harness import Channelgate, Policy, client_env, free_port, http, run
from proxy.app import create_app
from proxy.settings import parse_settings


def presented_cn(port: int, cafile: Path) -> str:
    """The common name of the certificate a new TLS connection is offered."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return str(x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def without_ca_overrides(env: dict[str, str]) -> dict[str, str]:
    """requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE win over pip's own --cert: drop them."""
    return {k: v for k, v in env.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}


def channelgate_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ TLS
def test_pip_installs_over_https_and_reload_swaps_the_certificate(tmp_path: Path, upstream_factory) -> None:  # type: ignore[no-untyped-def]
    write_simple_index(tmp_path / "up", [make_wheel(tmp_path / "dists", "tls-demo", "1.0")], fmt="json")
    upstream = upstream_factory(tmp_path / "up")
    tls = tmp_path / "tls"
    cert, key = make_cert(tls / "old", "channelgate-old")
    (tls / "cert.pem").write_bytes(cert.read_bytes())
    (tls / "key.pem").write_bytes(key.read_bytes())
    server = Channelgate(tmp_path / "cg", Policy({
        "server": {"tls_cert": str(tls / "cert.pem"), "tls_key": str(tls / "key.pem")},
        "upstreams": {"pypi": {"type": "pypi", "url": f"{upstream.url}/simple"}},
        "channels": {"mirror": {"public": True, "upstreams": ["pypi"]}},
    })).start()
    try:
        assert server.url.startswith("https://")
        target = tmp_path / "target"
        pip = run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--cert", str(cert),
                   "--index-url", f"{server.url}/mirror/simple", "--target", str(target), "tls-demo"],
                  env=without_ca_overrides(client_env(tmp_path / "home")))
        assert pip.returncode == 0, pip.stdout + pip.stderr
        assert (target / "tls_demo" / "__init__.py").exists()
        server.wait_log('"GET /mirror/simple/tls-demo/" 200')
        # plain HTTP on the TLS port is not served
        with pytest.raises(Exception):
            http("GET", f"http://127.0.0.1:{server.port}/api/health")

        # a renewed certificate at the same paths: `channelgate reload` makes new connections get it
        assert presented_cn(server.port, cert) == "channelgate-old"
        new_cert, new_key = make_cert(tls / "new", "channelgate-new")
        (tls / "cert.pem").write_bytes(new_cert.read_bytes())
        (tls / "key.pem").write_bytes(new_key.read_bytes())
        out = channelgate_cli("reload", "--config", str(server.config), cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == "reloaded", out.stdout + out.stderr
        assert presented_cn(server.port, new_cert) == "channelgate-new"
    finally:
        server.stop()


def test_tls_key_without_cert_and_a_bad_pair_are_config_errors(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path / "a", "a")
    _, other_key = make_cert(tmp_path / "b", "b")
    with pytest.raises(Exception, match="tls_cert and tls_key must be given together"):
        parse_settings(f"server: {{tls_key: {other_key}}}\n")
    with pytest.raises(Exception, match="cannot load the certificate"):
        parse_settings(f"server: {{tls_cert: {cert}, tls_key: {other_key}}}\n")


# ------------------------------------------------------------------ reload
def test_reload_command_with_a_good_and_a_bad_policy(tmp_path: Path) -> None:
    policy = Policy({"groups": {"readers": ["bob"]}, "channels": {"internal": {"read": ["group:readers"]}}})
    old_token = policy.add_token("bob", ["pypi:download"])
    server = Channelgate(tmp_path / "cg", policy).start()
    try:
        def status_with(token: str) -> int:
            return http("GET", f"{server.url}/internal/simple/", headers={"Authorization": f"Bearer {token}"})[0]

        new_token = policy.add_token("bob", ["pypi:download"])
        assert status_with(new_token) == 401
        server.write_policy()
        out = channelgate_cli("reload", "--config", str(server.config), cwd=tmp_path)
        assert (out.returncode, out.stdout) == (0, "reloaded\n"), out.stderr
        assert status_with(new_token) == 200

        bad = dict(policy.data, colour="blue")
        bad["channels"] = {"internal": {"read": ["group:readers"], "upstreams": ["nowhere"]}}
        server.write_policy(yaml.safe_dump(bad))
        out = channelgate_cli("reload", "--config", str(server.config), cwd=tmp_path)
        assert out.returncode == 1 and "reloaded" not in out.stdout
        assert "colour" in out.stdout and "nowhere" in out.stdout  # every problem, not the first
        assert status_with(old_token) == 200 and status_with(new_token) == 200  # the last good policy stays
    finally:
        server.stop()
    assert not list((server.storage / "run").glob("*.json"))  # the pid file goes with the server
    server.write_policy()
    out = channelgate_cli("reload", "--config", str(server.config), cwd=tmp_path)
    assert out.returncode == 1 and "no running server" in out.stdout


def test_a_stale_pid_file_never_signals_a_stranger(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump({"storage": {"path": str(storage)}}))
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (storage / "run").mkdir(parents=True)
        stale = storage / "run" / f"{socket.gethostname()}-{stranger.pid}.json"
        stale.write_text(json.dumps({"pid": stranger.pid, "config": str(config.resolve()), "workers": 1}))
        out = channelgate_cli("reload", "--config", str(config), cwd=tmp_path)
        assert out.returncode == 1 and "no running server" in out.stdout
        assert stranger.poll() is None  # not signalled: SIGHUP would have ended it
        assert not stale.exists()
    finally:
        stranger.kill()
        stranger.wait()


# ------------------------------------------------------------------ log options
def test_log_options_before_or_after_the_subcommand_and_bad_values(tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "s")}}))
    for args in (["--log-level", "debug", "check-config"], ["check-config", "--log-level", "DEBUG", "--log-format", "json"]):
        out = channelgate_cli(*args, "--config", str(config), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    # nested and later-added subcommands take them too
    out = channelgate_cli("token", "create", "--user", "ann", "--scope", "all", "--log-level", "warning", cwd=tmp_path)
    assert out.returncode == 0 and "cgt-" in out.stdout, out.stderr
    for command in (["seed"], ["export"], ["import"], ["reload"]):
        assert "--log-level" in channelgate_cli(*command, "--help", cwd=tmp_path).stdout
    for args, word in ((["check-config", "--log-level", "foo"], "foo"), (["--log-format", "yaml", "check-config"], "yaml")):
        out = channelgate_cli(*args, "--config", str(config), cwd=tmp_path)
        assert out.returncode == 2 and out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and word in lines[0] and "Traceback" not in out.stderr


def test_log_level_after_serve_takes_effect(tmp_path: Path) -> None:
    server = Channelgate(tmp_path / "cg", Policy({"channels": {"c": {"public": True}}}), args=["--log-level", "warning"]).start()
    try:
        assert http("GET", f"{server.url}/c/simple/")[0] == 200
    finally:
        server.stop()
    log = server.log()
    assert " INFO " not in log and "ready" not in log  # neither the start-up line nor access lines


# ------------------------------------------------------------------ health
async def test_liveness_and_readiness_have_their_own_status(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage = tmp_path / "storage"
    settings = parse_settings(f"storage: {{path: {storage}}}\nchannels: {{c: {{public: true}}}}\n")
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/api/health")).status == 200
    for url in ("/api/ready", "/api/health?ready"):
        resp = await client.get(url)
        assert resp.status == 200 and (await resp.json())["checks"] == {"storage": "ok", "catalog": "ok"}
    (storage / "tmp").rename(storage / "tmp-gone")  # the store can no longer take a write
    resp = await client.get("/api/ready")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["storage"] != "ok" and body["checks"]["catalog"] == "ok"
    assert (await client.get("/api/health")).status == 200  # alive, just not ready


@pytest.mark.filterwarnings("error::DeprecationWarning")  # closing the Redis cache used redis-py's deprecated close()
async def test_readiness_names_redis_down_as_degraded_not_unready(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Redis down is 200 "degraded" (health.py: all replicas share one Redis, and each still
    serves with local coordination); a broken store or catalog is what makes a 503. The
    app closes its Redis clients without a DeprecationWarning (coordination.Resilient.close)."""
    pytest.importorskip("redis")
    settings = parse_settings(
        f"storage: {{path: {tmp_path / 's'}}}\ncache: {{backend: redis, redis_url: 'redis://127.0.0.1:{free_port()}/0'}}\n"
    )
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/api/ready")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "degraded", body
    assert body["checks"]["redis"].startswith("degraded, coordinating locally: ConnectionError"), body
    assert body["checks"]["storage"] == "ok" and body["checks"]["catalog"] == "ok"
    assert (await client.get("/api/health")).status == 200


# ------------------------------------------------------------------ workers and metrics_listen
def metric(body: bytes, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_workers_sum_their_metrics_on_the_metrics_address(tmp_path: Path) -> None:
    metrics_port = free_port()
    server = Channelgate(tmp_path / "cg", Policy({
        "server": {"metrics_listen": f"127.0.0.1:{metrics_port}"},
        "channels": {"c": {"public": True}},
    }), args=["--workers", "2"]).start()
    try:
        requests_made = 40
        for _ in range(requests_made):  # a new connection each: the kernel spreads them over the workers
            assert http("GET", f"{server.url}/c/simple/", headers={"Connection": "close"})[0] == 200
        assert http("GET", f"{server.url}/metrics")[0] == 404  # only on metrics_listen
        # a worker counts a request just after its answer went out: wait for every access line
        # (each is written after its count), then any scrape must see them all
        deadline = time.monotonic() + 30
        while server.log().count('"GET /c/simple/" 200') < requests_made and time.monotonic() < deadline:
            time.sleep(0.05)  # access lines are written in batches
        for _ in range(4):  # whichever worker answers the scrape, it reports all of them
            status, _, body = http("GET", f"http://127.0.0.1:{metrics_port}/metrics")
            assert status == 200
            assert metric(body, "channelgate_requests_total", ecosystem="pypi", status="200") == requests_made
        assert http("GET", f"http://127.0.0.1:{metrics_port}/c/simple/")[0] == 404  # metrics and nothing else
        # reload reaches every worker (through the parent) and waits for each one's outcome
        out = channelgate_cli("reload", "--config", str(server.config), cwd=tmp_path)
        assert (out.returncode, out.stdout) == (0, "reloaded\n"), out.stdout + out.stderr
        assert server.wait_log("policy reloaded").count("policy reloaded") == 2
    finally:
        server.stop()
