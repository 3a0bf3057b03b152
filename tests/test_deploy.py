"""The deploy files, read as the tools that apply them would: no secret in them, Ray's
token everywhere it is needed, network policies that open the Ray ports and no others.

Parsing only: ``test_ray_token_e2e.py`` runs Ray with the manifest's start parameters
and its token settings for real.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFEST = DEPLOY / "kuberay" / "raycluster.yaml"
UNIT = DEPLOY / "systemd" / "commandpost.service"
CLUSTER_LABEL = "ray.io/cluster"
TOKEN_SECRET = {"name": "commandpost-ray-token", "key": "auth_token"}
#: The start parameters that name a port a Ray node listens on, and the metrics port
#: among them (scraped by Prometheus, not by the Ray pods).
PORT_PARAMS = ("port", "node-manager-port", "object-manager-port", "runtime-env-agent-port",
               "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
               "metrics-export-port")
METRICS_PARAM = "metrics-export-port"
GCS_DEFAULT_PORT = 6379


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def raycluster() -> dict[str, Any]:
    return next(d for (kind, _), d in documents().items() if kind == "RayCluster")


def groups() -> list[dict[str, Any]]:
    spec = raycluster()["spec"]
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def pod_labels(group: dict[str, Any], node_type: str) -> dict[str, str]:
    """The labels KubeRay gives a pod of ``group`` (besides those of its template)."""
    labels = dict(group["template"].get("metadata", {}).get("labels", {}))
    labels.update({CLUSTER_LABEL: raycluster()["metadata"]["name"],
                   "ray.io/node-type": node_type})
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # what the checks below understand
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def ray_ports(params: dict[str, str]) -> set[int]:
    """The ports a node started with ``params`` listens on beyond loopback (metrics aside)."""
    ports = {int(params[p]) for p in PORT_PARAMS if p in params and p != METRICS_PARAM}
    if "node-manager-port" in params:  # the head's GCS (KubeRay's default port)
        ports.add(int(params.get("port", GCS_DEFAULT_PORT)))
    return ports


def policy_ports(rule: dict[str, Any]) -> tuple[set[int], set[tuple[int, int]]]:
    single, ranges = set(), set()
    for p in rule["ports"]:
        assert p.get("protocol", "TCP") == "TCP"
        if "endPort" in p:
            ranges.add((p["port"], p["endPort"]))
        else:
            single.add(p["port"])
    return single, ranges


def test_every_ray_container_authenticates_with_the_token_from_a_secret() -> None:
    containers = [c for g in groups() for c in g["template"]["spec"]["containers"]]
    assert {c["name"] for c in containers} >= {"ray-head", "ray-worker", "commandpost"}
    for c in containers:
        env = env_of(c)
        assert env["RAY_AUTH_MODE"].get("value") == "token", c["name"]
        token = env["RAY_AUTH_TOKEN"]
        assert "value" not in token, c["name"]
        assert token["valueFrom"]["secretKeyRef"] == TOKEN_SECRET, c["name"]


def test_the_manifest_holds_no_secret_value() -> None:
    assert not any(kind == "Secret" for kind, _ in documents())
    for g in groups():
        for c in g["template"]["spec"]["containers"]:
            for name, e in env_of(c).items():
                if any(w in name for w in ("TOKEN", "PASSWORD", "URL")):
                    assert "secretKeyRef" in e.get("valueFrom", {}), (c["name"], name)
            assert not any("@" in a or "--redis" in a or "--mqtt" in a
                           for a in c.get("command", []) + c.get("args", [])), c["name"]


def test_the_runtime_joins_the_head_and_serves_the_admin_web_on_its_declared_port() -> None:
    head = raycluster()["spec"]["headGroupSpec"]["template"]["spec"]
    runtime = next(c for c in head["containers"] if c["name"] == "commandpost")
    argv = runtime["command"]
    assert argv[:2] == ["commandpost", "run"]
    assert argv[argv.index("--ray-address") + 1].endswith(f":{GCS_DEFAULT_PORT}")
    admin_port = int(argv[argv.index("--admin") + 1].rpartition(":")[2])
    assert {"name": "admin", "containerPort": admin_port} in runtime["ports"]
    # The driver finds the head's node through Ray's directory, which both containers share.
    mounts = {c["name"]: {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
              for c in head["containers"]}
    assert mounts["commandpost"]["/tmp/ray"] == mounts["ray-head"]["/tmp/ray"]
    service = documents()["Service", "commandpost-admin"]
    assert service["spec"]["ports"][0]["targetPort"] == "admin"
    assert service["spec"]["selector"] == {CLUSTER_LABEL: "commandpost",
                                           "ray.io/node-type": "head"}


def test_head_and_workers_pin_the_same_ray_ports() -> None:
    head, *workers = groups()
    assert ray_ports(head["rayStartParams"]) >= {GCS_DEFAULT_PORT, 6380}
    for w in workers:
        params = w["rayStartParams"]
        assert {p: params.get(p) for p in PORT_PARAMS if p != "port"} == \
               {p: head["rayStartParams"].get(p) for p in PORT_PARAMS if p != "port"}
        assert (params["min-worker-port"], params["max-worker-port"]) == \
               (head["rayStartParams"]["min-worker-port"],
                head["rayStartParams"]["max-worker-port"])


def test_the_ray_policy_selects_every_ray_pod_and_lets_them_talk_on_ray_ports_only() -> None:
    policy = documents()["NetworkPolicy", "commandpost-ray"]["spec"]
    head, *workers = groups()
    for group, node_type in [(head, "head"), *((w, "worker") for w in workers)]:
        assert selects(policy["podSelector"], pod_labels(group, node_type))
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    params = head["rayStartParams"]
    workers_range = (int(params["min-worker-port"]), int(params["max-worker-port"]))
    (ingress,) = policy["ingress"]
    (peers,) = ingress["from"]
    assert set(peers) == {"podSelector"}  # the Ray pods of this namespace, nothing else
    assert peers["podSelector"]["matchLabels"] == {CLUSTER_LABEL: "commandpost"}
    assert policy_ports(ingress) == (ray_ports(params), {workers_range})
    assert int(params[METRICS_PARAM]) not in policy_ports(ingress)[0]
    egress_to_ray = [r for r in policy["egress"] if r["to"] == ingress["from"]]
    assert [policy_ports(r) for r in egress_to_ray] == [policy_ports(ingress)]


def test_the_ray_pods_reach_out_to_dns_redis_the_broker_and_the_field_only() -> None:
    policy = documents()["NetworkPolicy", "commandpost-ray"]["spec"]
    out = {}
    for rule in policy["egress"]:
        (peer,) = rule["to"]
        name = (peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                or peer.get("podSelector", {}).get("matchLabels", {}).get("k8s-app")
                or ("field" if "ipBlock" in peer else None)
                or peer["podSelector"]["matchLabels"].get(CLUSTER_LABEL))
        out[name] = {p["port"] for p in rule["ports"]}
    assert out.pop("redis") == {6379}
    assert out.pop("mosquitto") == {1883}
    assert out.pop("kube-dns") == {53}
    assert out.pop("field") == {502, 4840}
    (field,) = [r["to"][0]["ipBlock"] for r in policy["egress"] if "ipBlock" in r["to"][0]]
    assert not field["cidr"].endswith("/0")  # the field network, not the whole world
    assert set(out) == {"commandpost"}


def test_the_admin_web_port_opens_to_the_ingress_controller_alone() -> None:
    policy = documents()["NetworkPolicy", "commandpost-admin-web"]["spec"]
    head, *workers = groups()
    assert selects(policy["podSelector"], pod_labels(head, "head"))
    assert not any(selects(policy["podSelector"], pod_labels(w, "worker")) for w in workers)
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"}
    runtime = next(c for c in head["template"]["spec"]["containers"]
                   if c["name"] == "commandpost")
    admin = next(p["containerPort"] for p in runtime["ports"] if p["name"] == "admin")
    assert policy_ports(rule) == ({admin}, set())


def unit_settings() -> list[tuple[str, str]]:
    text = UNIT.read_text(encoding="utf-8").replace("\\\n", " ")
    return [tuple(line.strip().split("=", 1)) for line in text.splitlines()  # type: ignore[misc]
            if "=" in line and not line.lstrip().startswith(("#", ";"))]


def test_the_systemd_unit_hands_ray_its_token_as_a_credential() -> None:
    settings = unit_settings()
    env = dict(v.split("=", 1) for k, v in settings if k == "Environment")
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == "%d/ray-token"  # systemd's credentials directory
    (cred,) = [v for k, v in settings if k == "LoadCredential"]
    assert cred.split(":", 1) == ["ray-token", "/etc/commandpost/ray-token"]
    assert "RAY_AUTH_TOKEN" not in env  # the token itself is in no variable


@pytest.mark.parametrize("word", ["@", "--redis", "--mqtt", "token", "TOKEN", "password"])
def test_the_systemd_unit_has_no_secret_on_its_command_line(word: str) -> None:
    (exec_start,) = [v for k, v in unit_settings() if k == "ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[1:3] == ["run", "--inventory"]
    assert not any(word in a for a in argv)


def test_the_systemd_unit_allows_the_real_time_priority_its_environment_file_names() -> None:
    from runtime.niceness import REALTIME_ENV, check_realtime

    (limit,) = [v for k, v in unit_settings() if k == "LimitRTPRIO"]
    example = (UNIT.parent / "commandpost.env.example").read_text(encoding="utf-8")
    (line,) = [ln.lstrip("#") for ln in example.splitlines()
               if ln.lstrip("#").startswith(f"{REALTIME_ENV}=")]
    asked = check_realtime(int(line.split("=", 1)[1]))
    assert 0 < asked <= int(limit)
