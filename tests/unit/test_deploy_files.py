"""Static checks of the deployment files, fast and without Docker.

docker-compose.yml, deploy/Dockerfile, deploy/k8s/*.yaml, the Prometheus, alert and
Grafana files: parsed, and their wiring checked against each other and the repository.
CI also runs them for real (.ci/compose.sh: the compose stack on a Docker engine, the
k8s manifests rendered by kubectl and validated against the Kubernetes schemas).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import urllib.parse
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from bots_core import PoolConfig
from bots_server._metrics import ServerMetrics
from bots_server._model import PoolStats
from bots_server._settings import ServerSettings
from bots_server._store import Store
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTING_VARS = {f"BOTS_{f.name.upper()}" for f in dataclasses.fields(ServerSettings)}
DEFAULTS = ServerSettings()


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def redis_directives(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


# ----------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (w, _) in enumerate(steps) if w == "FROM")
    return steps[last_from:]


def test_image_runs_as_a_non_root_user() -> None:
    users = [arg for word, arg in final_stage() if word == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric UID lets Kubernetes verify runAsNonRoot"


def test_image_healthcheck_uses_bots_check_on_the_grpc_port() -> None:
    checks = [arg for word, arg in final_stage() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    cmd = json.loads(checks[0].split("CMD", 1)[1].strip())
    assert cmd[:2] == ["bots", "check"]
    port = int(cmd[cmd.index("--target") + 1].rsplit(":", 1)[1])
    env = dict(
        pair.split("=", 1)
        for word, arg in final_stage()
        if word == "ENV"
        for pair in shlex.split(arg)
    )
    assert port == int(env["BOTS_PORT"])
    assert set(env) - {"PYTHONUNBUFFERED", "PATH"} <= SETTING_VARS
    assert env["PATH"].startswith("/opt/bots/bin:")  # where the venv put `bots`


def test_image_entrypoint_is_tini_running_bots() -> None:
    entry = [json.loads(arg) for word, arg in final_stage() if word == "ENTRYPOINT"]
    assert entry and entry[-1][0].endswith("tini") and "bots" in entry[-1]
    assert any("tini" in arg for word, arg in final_stage() if word == "RUN")
    exposed = {int(p) for word, arg in final_stage() if word == "EXPOSE" for p in arg.split()}
    assert exposed == {DEFAULTS.port, DEFAULTS.metrics_port}


def test_image_base_is_a_build_argument_defaulting_to_python_slim() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    # A `# syntax=` line makes BuildKit fetch a frontend from a registry: no offline build.
    assert not re.search(r"^#\s*syntax=", text, re.M)
    steps = dockerfile()
    first_from = next(i for i, (w, _) in enumerate(steps) if w == "FROM")
    args = dict(a.split("=", 1) for w, a in steps[:first_from] if w == "ARG")
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    froms = [a.split()[0] for w, a in steps if w == "FROM"]
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"]


@pytest.mark.parametrize("name", ["redis", "prometheus"])
def test_local_images_take_the_same_base_argument(name: str) -> None:
    text = (DEPLOY / "local" / f"{name}.Dockerfile").read_text()
    assert "ARG BASE_IMAGE" in text and "FROM ${BASE_IMAGE}" in text
    assert "\nUSER " in text  # never root, like the official images


def test_image_copies_only_paths_that_exist() -> None:
    for word, arg in dockerfile():
        if word == "COPY" and not arg.startswith("--from"):
            for src in arg.split()[:-1]:
                assert (ROOT / src).exists(), src


# ------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(ROOT / "docker-compose.yml")  # type: ignore[no-any-return]


# What `make compose-env` (deploy/compose-env.sh) puts into .env.
COMPOSE_ENV = {"BOTS_REDIS_PASSWORD": "0123abcd" * 6, "GRAFANA_ADMIN_PASSWORD": "f" * 48}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", sub, value)


def env_of(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    values = service.get("environment", {})
    if isinstance(values, list):
        values = dict(e.split("=", 1) for e in values)
    return {k: interpolate(str(v), COMPOSE_ENV if env is None else env) for k, v in values.items()}


def published(service: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    return [
        interpolate(str(p), COMPOSE_ENV if env is None else env) for p in service.get("ports", [])
    ]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (host path or volume name)."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        out[dst] = src
    return out


def test_compose_runs_redis_two_selectors_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "selector", "prometheus", "grafana"}
    assert services["selector"]["deploy"]["replicas"] == 2
    assert services["selector"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / services["selector"]["build"]["context"] / "deploy" / "Dockerfile").exists()


def test_compose_bind_mounts_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    used = set()
    for name, service in compose["services"].items():
        for src in mounts(service).values():
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"
            else:
                used.add(src)
    assert used == declared


def test_compose_redis_uses_the_repo_config_with_aof_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["command"] == ["sh", "/usr/local/etc/redis/start.sh"]
    assert mounts(redis)["/usr/local/etc/redis/start.sh"] == "./deploy/redis-start.sh"
    conf_path = env_of(redis)["REDIS_CONF"]
    assert mounts(redis)[conf_path] == "./deploy/redis.conf"
    conf = redis_directives((DEPLOY / "redis.conf").read_text())
    assert conf["appendonly"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"
    assert mounts(redis)[conf["dir"]] in compose["volumes"]  # AOF lands on the named volume
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    assert redis["user"] == "redis"


def test_redis_requires_a_password_and_is_reachable_only_on_the_backend_network(
    compose: dict[str, Any],
) -> None:
    redis = compose["services"]["redis"]
    assert "ports" not in redis  # never published on the host
    assert redis["networks"] == ["backend"]
    assert compose["networks"]["backend"]["internal"] is True
    joined = [n for n, s in compose["services"].items() if "backend" in s.get("networks", [])]
    assert sorted(joined) == ["redis", "selector"]
    conf = redis_directives((DEPLOY / "redis.conf").read_text())
    assert conf["protected-mode"] == "yes"
    start = (DEPLOY / "redis-start.sh").read_text()
    # No password-less access at all; the default user keeps +@all, or Redis 7.0's
    # AOF replay of MULTI/EXEC fails on restart (found by .ci/compose.sh).
    default = next(line for line in start.splitlines() if "user default" in line)
    assert "resetpass" in default and "nopass" not in default.replace("resetpass", "")
    assert "+@all" in default and "-@" not in default
    assert "--aclfile" in start and "REDIS_PASSWORD" in start
    # The password comes from the environment (.env), never from the compose file.
    assert env_of(redis)["REDIS_PASSWORD"] == COMPOSE_ENV["BOTS_REDIS_PASSWORD"]
    with pytest.raises(KeyError, match="make compose-env"):
        env_of(redis, {})


def test_compose_publishes_on_loopback_unless_told_otherwise(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("selector", "prometheus", "grafana"):
        ports = published(services[name])
        assert ports and all(p.startswith("127.0.0.1:") for p in ports), (name, ports)
        exposed = published(services[name], {**COMPOSE_ENV, "BOTS_BIND_ADDRESS": "0.0.0.0"})
        assert all(p.startswith("0.0.0.0:") for p in exposed), (name, exposed)
    assert published(services["selector"]) == ["127.0.0.1:50051-50052:50051"]
    moved = published(services["selector"], {**COMPOSE_ENV, "BOTS_SELECTOR_PORTS": "7000-7001"})
    assert moved == ["127.0.0.1:7000-7001:50051"]


def test_compose_images_default_to_the_public_ones_and_can_be_replaced(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    defaults = {n: interpolate(s["image"], {}) for n, s in services.items()}
    assert defaults == {
        "redis": "redis:7.4-alpine",
        "selector": "bots-selector:latest",
        "prometheus": "prom/prometheus:v2.53.0",
        "grafana": "grafana/grafana:11.1.0",
    }
    local = {"BOTS_REDIS_IMAGE": "r:local", "BOTS_PROMETHEUS_IMAGE": "p:local"}
    assert interpolate(services["redis"]["image"], local) == "r:local"
    assert interpolate(services["prometheus"]["image"], local) == "p:local"
    base = services["selector"]["build"]["args"]["BASE_IMAGE"]
    assert interpolate(base, {}) == "python:3.11-slim"


def test_grafana_is_opt_in_and_needs_a_login(compose: dict[str, Any]) -> None:
    graf = compose["services"]["grafana"]
    assert graf["profiles"] == ["grafana"]
    env = env_of(graf)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == COMPOSE_ENV["GRAFANA_ADMIN_PASSWORD"]


def test_compose_token_override_points_the_selector_at_the_mounted_secret() -> None:
    override = load(DEPLOY / "compose.tokens.yml")
    sel = override["services"]["selector"]
    path = sel["environment"]["BOTS_AUTH_TOKENS_FILE"]
    (secret,) = sel["secrets"]
    assert path == f"/run/secrets/{secret}"
    assert secret in override["secrets"]


def test_compose_selector_wiring(compose: dict[str, Any]) -> None:
    sel = compose["services"]["selector"]
    env = env_of(sel)
    assert set(env) <= SETTING_VARS
    settings = ServerSettings.from_env(env)  # every value parses
    assert settings.host == "0.0.0.0"
    url = urllib.parse.urlsplit(settings.redis_url)
    assert (url.hostname, url.username) == ("redis", "bots")  # the ACL user of redis-start.sh
    assert url.password == COMPOSE_ENV["BOTS_REDIS_PASSWORD"]
    assert "backend" in sel["networks"]
    assert sel["depends_on"]["redis"]["condition"] == "service_healthy"
    test = sel["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bots", "check"]
    assert int(test[test.index("--target") + 1].rsplit(":", 1)[1]) == settings.port
    assert all(p.endswith(f":{settings.port}") for p in published(sel))
    assert str(settings.metrics_port) in [str(p) for p in sel.get("expose", [])]
    grace = float(sel["stop_grace_period"].rstrip("s"))
    assert grace > settings.grace_seconds
    # tini in the image or init: true in compose, so SIGTERM reaches `bots serve`.
    entry = [json.loads(a) for w, a in final_stage() if w == "ENTRYPOINT"][-1]
    assert sel.get("init") is True or entry[0].endswith("tini")


def test_compose_prometheus_scrapes_every_selector_replica(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    m = mounts(prom)
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    assert m[config_path] == "./deploy/prometheus.yml"
    config = load(DEPLOY / "prometheus.yml")
    config_dir = str(Path(config_path).parent)
    for rule_file in config["rule_files"]:
        assert m[f"{config_dir}/{rule_file}"] == f"./deploy/{rule_file}"
        assert (DEPLOY / rule_file).exists()
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "bots-selector")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["selector"] and sd["type"] == "A"
    assert (
        sd["port"] == ServerSettings.from_env(env_of(compose["services"]["selector"])).metrics_port
    )
    assert job["metrics_path"] == "/metrics"


def test_compose_grafana_provisions_the_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    graf = compose["services"]["grafana"]
    m = mounts(graf)
    assert m["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    providers = load(DEPLOY / "grafana/provisioning/dashboards/bots.yml")["providers"]
    dash_dir = providers[0]["options"]["path"]
    assert (ROOT / m[dash_dir]).is_dir()
    assert (ROOT / m[dash_dir] / "bots-selector.json").exists()
    home = env_of(graf)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dash_dir}/bots-selector.json"
    sources = load(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert sources[0]["url"] == "http://prometheus:9090"
    assert published(compose["services"]["prometheus"]) == ["127.0.0.1:9090:9090"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/bots-selector.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {sources[0]["uid"]}


# ---------------------------------------------------------------- dashboards


def exported_metric_names() -> set[str]:
    """Names of every sample the server can export, with histogram/counter suffixes."""
    stats = PoolStats(
        name="p", config=PoolConfig(), task_count=1, steps_applied=1,
        open_selections=0, last_effective_task_ratio=0.5, rolling_effective_task_ratio=0.5,
        capability=0.5, tasks_with_references=1, selections_opened=1, selections_expired=0,
        mean_posterior=0.5, positive_ratio=0.5, rolling_positive_ratio=0.5, below_one_ratio=0.5,
        rolling_below_one_ratio=0.5, estimator_pearson=0.1, estimator_roc_auc=0.6,
        estimator_pairs=3, posterior_mean_counts=(1,) + (0,) * 9,
    )  # fmt: skip

    # The pool collector only needs these three.
    store = cast(
        Store, SimpleNamespace(epoch="e", healthy=lambda: True, list_pools=lambda: [stats])
    )
    registry = CollectorRegistry()
    ServerMetrics(store, registry=registry)
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "gauge": [""],
        "info": ["_info"],
        "summary": ["_sum", "_count"],
    }
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, [""])
    }


def test_dashboard_and_alerts_only_use_metrics_the_server_exports() -> None:
    names = exported_metric_names()
    dashboard = (DEPLOY / "grafana/dashboards/bots-selector.json").read_text()
    alerts = (DEPLOY / "alerts.yml").read_text()
    used = set(re.findall(r"\bbots_[a-z_]+", dashboard + alerts))
    assert used, "no bots_ metric referenced"
    assert used <= names, used - names


def test_dashboard_shows_etr_latency_report_rate_and_posterior_histogram() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/bots-selector.json").read_text())
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    assert any("bots_pool_effective_task_ratio" in e for e in exprs.values())
    assert any('bots_rpc_duration_seconds_bucket{method="SelectBatch"' in e for e in exprs.values())
    assert any("rate(bots_reports_total" in e for e in exprs.values())
    assert any("bots_pool_posterior_mean_bucket" in e for e in exprs.values())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = load(DEPLOY / "k8s" / "kustomization.yaml")
    docs = {}
    for resource in kustomization["resources"]:
        path = DEPLOY / "k8s" / resource
        assert path.exists(), resource
        for doc in load_all(path):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    for doc in load_all(DEPLOY / "k8s" / "secret.example.yaml"):
        docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_k8s_selector_deployment_probes_are_grpc_on_the_health_port(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    dep = k8s[("Deployment", "bots-selector")]
    (container,) = pod_spec(dep)["containers"]
    config = k8s[("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])]["data"]
    assert set(config) <= SETTING_VARS
    settings = ServerSettings.from_env(config)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": settings.port, "health": settings.health_port, "metrics": settings.metrics_port,
    }  # fmt: skip
    ready, live = container["readinessProbe"]["grpc"], container["livenessProbe"]["grpc"]
    assert ready["port"] == live["port"] == settings.health_port
    assert ready["service"] == "bots.v1.TaskSelector"  # follows the store's health
    assert live["service"] == "liveness"  # stays SERVING while the process runs
    assert container["startupProbe"]["grpc"]["port"] == settings.health_port
    assert dep["spec"]["replicas"] >= 2
    grace = pod_spec(dep)["terminationGracePeriodSeconds"]
    assert grace > settings.grace_seconds


def test_k8s_selector_runs_non_root_with_the_token_secret_mounted(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    dep = k8s[("Deployment", "bots-selector")]
    spec = pod_spec(dep)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    (container,) = spec["containers"]
    config = k8s[("ConfigMap", "bots-selector-config")]["data"]
    tokens_dir = str(Path(config["BOTS_AUTH_TOKENS_FILE"]).parent)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == tokens_dir)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    secret = k8s[("Secret", volume["secret"]["secretName"])]
    assert Path(config["BOTS_AUTH_TOKENS_FILE"]).name in secret["stringData"]
    password = next(e for e in container["env"] if e["name"] == "REDIS_PASSWORD")
    ref = password["valueFrom"]["secretKeyRef"]
    assert ref["key"] in k8s[("Secret", ref["name"])]["stringData"]


def test_k8s_service_is_headless_and_targets_the_selector_pods(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    dep = k8s[("Deployment", "bots-selector")]
    svc = k8s[("Service", "bots-selector")]
    assert svc["spec"]["clusterIP"] == "None"  # DNS returns every pod: client-side balancing
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in pod_spec(dep)["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names
    pdb = k8s[("PodDisruptionBudget", "bots-selector")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def selector_env(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (container,) = pod_spec(k8s[("Deployment", "bots-selector")])["containers"]
    return {e["name"]: e for e in container["env"]}


def test_k8s_in_cluster_redis_matches_the_selector_url_and_repo_config(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    env = selector_env(k8s)
    # Kubernetes expands $(REDIS_PASSWORD) from the variable defined before it.
    names = list(env)
    assert names.index("REDIS_PASSWORD") < names.index("BOTS_REDIS_URL")
    assert names.index("BOTS_REDIS_URL") == 1  # the external-Redis patch in docs/operations.md
    assert "/containers/0/env/1/value" in (ROOT / "docs" / "operations.md").read_text()
    url = urllib.parse.urlsplit(env["BOTS_REDIS_URL"]["value"])
    assert (url.username, url.password) == ("bots", "$(REDIS_PASSWORD)")
    assert "BOTS_REDIS_URL" not in k8s[("ConfigMap", "bots-selector-config")]["data"]
    host = url.hostname
    svc = k8s[("Service", host)]
    sts = k8s[("StatefulSet", host)]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    (container,) = pod_spec(sts)["containers"]
    redis_env = {e["name"]: e for e in container["env"]}
    # Redis and the selector read the password from the same Secret key.
    assert redis_env["REDIS_PASSWORD"]["valueFrom"] == env["REDIS_PASSWORD"]["valueFrom"]
    start_file = container["command"][-1]
    conf_file = redis_env["REDIS_CONF"]["value"]
    mount = next(m for m in container["volumeMounts"] if conf_file.startswith(m["mountPath"]))
    assert start_file.startswith(mount["mountPath"])
    volume = next(v for v in pod_spec(sts)["volumes"] if v["name"] == mount["name"])
    data = k8s[("ConfigMap", volume["configMap"]["name"])]["data"]
    inline = data[Path(conf_file).name]
    assert redis_directives(inline) == redis_directives((DEPLOY / "redis.conf").read_text())
    assert data[Path(start_file).name] == (DEPLOY / "redis-start.sh").read_text()
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert data_mount["mountPath"] == redis_directives(inline)["dir"]
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert "data" in claims


def test_k8s_network_policy_lets_only_the_selector_reach_redis(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    sts = k8s[("StatefulSet", "bots-redis")]
    policy = k8s[("NetworkPolicy", "bots-redis")]["spec"]
    redis_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    selector_labels = k8s[("Deployment", "bots-selector")]["spec"]["template"]["metadata"]
    assert source["podSelector"]["matchLabels"].items() <= selector_labels["labels"].items()
    assert "namespaceSelector" not in source
    assert [p["port"] for p in rule["ports"]] == [6379]
    ports = {
        p["containerPort"]
        for p in pod_spec(k8s[("Deployment", "bots-selector")])["containers"][0]["ports"]
    }
    sel_policy = k8s[("NetworkPolicy", "bots-selector")]["spec"]
    assert {p["port"] for r in sel_policy["ingress"] for p in r["ports"]} == ports


# --------------------------------------------------------------------- CI


def test_ci_installs_prometheus_for_the_integration_test() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "prometheus" in ci and "redis-server" in ci


def test_ci_runs_the_compose_stack_and_renders_the_k8s_manifests() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/compose.sh" in ci
    script = (ROOT / ".ci" / "compose.sh").read_text()
    for needed in ("kubectl\" kustomize deploy/k8s", "kubernetes-validate", "up -d --no-build",
                   "--wait", "down -v", "compose_checks.py", "deploy/compose.tokens.yml"):  # fmt: skip
        assert needed in script, needed
