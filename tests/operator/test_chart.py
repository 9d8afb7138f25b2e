"""The Helm chart with the real helm and the real API server.

`helm lint` and `helm template` for several values files; the rendered manifests' security
settings and RBAC; `kubectl apply --server-side --dry-run=server` of every rendering to the
operator tests' kube-apiserver (CRDs installed first); and the operator, started with the
Deployment's args and env and the chart's ServiceAccount and RBAC, reconciling a run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spa-operator"
VALUES = Path(__file__).resolve().parent / "chart-values"
VALUES_FILES = [None, *sorted(VALUES.glob("*.yaml"))]
IDS = ["default", *(p.stem for p in VALUES_FILES[1:])]
RELEASE, RELEASE_NS = "spa", "spa-system"

from kube_testenv import REQUIRE_ENV, binaries_dir
from spa_operator.config import VLLM_IMAGE


@pytest.fixture(scope="session")
def helm() -> str:
    path = binaries_dir() / "helm"
    if not path.is_file():
        message = f"{path} not built: run `scripts/kube-testenv.sh build`"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


def render(helm: str, values: Path | None = None, *sets: str,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [helm, "template", RELEASE, str(CHART), "--namespace", RELEASE_NS]
    if values is not None:
        args += ["--values", str(values)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def objects(helm: str, values: Path | None = None, *sets: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render(helm, values, *sets).stdout) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


# --- lint and render -------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUES_FILES, ids=IDS)
def test_helm_lint_passes_strictly(helm: str, values: Path | None) -> None:
    args = [helm, "lint", "--strict", str(CHART)]
    if values is not None:
        args += ["--values", str(values)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_values_schema_rejects_unknown_keys_and_bad_values(helm: str) -> None:
    out = render(helm, None, "watchNamespace=team-a", check=False)
    assert out.returncode != 0 and "watchNamespace" in out.stderr
    out = render(helm, None, "metrics.port=70000", check=False)
    assert out.returncode != 0 and "/metrics/port" in out.stderr and "65,535" in out.stderr


def test_the_chart_crds_are_the_operators() -> None:
    for crd in (REPO / "operator" / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text()


@pytest.mark.parametrize("values", VALUES_FILES, ids=IDS)
def test_the_operator_pod_is_locked_down(helm: str, values: Path | None) -> None:
    (deployment,) = by_kind(objects(helm, values), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert "--standalone" in container["args"]


@pytest.mark.parametrize("values", VALUES_FILES, ids=IDS)
def test_rbac_lists_every_verb_and_resource(helm: str, values: Path | None) -> None:
    objs = objects(helm, values)
    rules = [r for o in by_kind(objs, "ClusterRole") + by_kind(objs, "Role")
             for r in o["rules"]]
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
    # The operator never touches Secrets (runs name them; pods read them).
    assert not any("secrets" in r["resources"] for r in rules)


def test_cluster_wide_mode_binds_a_cluster_role(helm: str) -> None:
    objs = objects(helm)
    names = {o["metadata"]["name"] for o in by_kind(objs, "ClusterRoleBinding")}
    assert names == {"spa-spa-operator", "spa-spa-operator-discovery"}
    assert by_kind(objs, "Role") == [] and by_kind(objs, "RoleBinding") == []
    (deployment,) = by_kind(objs, "Deployment")
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_namespaced_mode_grants_nothing_cluster_wide_but_discovery(helm: str) -> None:
    objs = objects(helm, VALUES / "namespaced.yaml")
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(objs, "RoleBinding")) == \
        ["team-a", "team-b"]
    operator_cluster_roles = [o for o in by_kind(objs, "ClusterRole")
                              if "aggregate-to-view" not in str(o["metadata"].get("labels"))
                              and "aggregate-to-edit" not in str(o["metadata"].get("labels"))]
    (discovery,) = operator_cluster_roles
    assert {res for r in discovery["rules"] for res in r["resources"]} == \
        {"customresourcedefinitions", "namespaces"}
    assert {v for r in discovery["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    (deployment,) = by_kind(objs, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_users_get_run_access_through_the_built_in_roles(helm: str) -> None:
    roles = {o["metadata"]["name"]: o for o in by_kind(objects(helm), "ClusterRole")}
    view, edit = roles["spa-spa-operator-view"], roles["spa-spa-operator-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "aggregate-to-view" not in json.dumps(edit["metadata"]["labels"])
    assert set(edit["rules"][0]["verbs"]) >= {"create", "patch", "delete"}


def test_monitoring_and_network_policy_are_opt_in(helm: str) -> None:
    assert by_kind(objects(helm), "ServiceMonitor") == []
    (monitor,) = by_kind(objects(helm, VALUES / "monitoring.yaml"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics",
                                             "interval": "15s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"

    def env(objs: list[dict[str, Any]]) -> dict[str, str]:
        (deployment,) = by_kind(objs, "Deployment")
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in c["env"]}

    assert env(objects(helm))["SPA_OPERATOR_NETWORK_POLICY"] == "false"
    objs = objects(helm, VALUES / "network-policy.yaml")
    assert env(objs)["SPA_OPERATOR_NETWORK_POLICY"] == "true"
    (role,) = by_kind(objs, "Role")
    assert any("networkpolicies" in r["resources"] for r in role["rules"])


def test_workload_images_default_to_the_charts_version(helm: str) -> None:
    def env(values: Path | None) -> dict[str, str]:
        (deployment,) = by_kind(objects(helm, values), "Deployment")
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in c["env"]}

    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    default = env(None)
    assert default["SPA_OPERATOR_WORKER_IMAGE"] == f"ghcr.io/spa-dev/spa-worker:{version}"
    assert default["SPA_OPERATOR_VLLM_IMAGE"] == VLLM_IMAGE
    custom = env(VALUES / "custom.yaml")
    assert custom["SPA_OPERATOR_TRAINER_IMAGE"] == "registry.example.com/ml/spa-trainer:cu128"
    assert custom["SPA_OPERATOR_WORKER_IMAGE"] == f"registry.example.com/ml/spa-worker:{version}"
    assert custom["TZ"] == "UTC"


def test_images_default_to_the_release_and_vllm_is_pinned_once() -> None:
    """Outside the chart, too, the operator names its own release's images (no :latest), and
    the chart names the vLLM image spa_operator.config pins; the project builds none on it."""
    from spa_operator.config import IMAGE_TAG, OperatorConfig

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert IMAGE_TAG == chart["appVersion"]
    config = OperatorConfig()
    for image in (config.worker_image, config.trainer_image):
        assert image.endswith(f":{IMAGE_TAG}"), image
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["workloadImages"]["vllm"] == VLLM_IMAGE
    dockerfile = (CHART.parent.parent / "images" / "Dockerfile").read_text()
    assert "vllm/vllm-openai" not in dockerfile  # no second pin to drift


# --- against the real API server ------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(kube: Any, api_client: Any, helm: str) -> Any:
    """The test API server with the namespaces the renderings use, and the ServiceMonitor CRD
    (the Prometheus Operator's own, from its Go module) so monitoring renders apply too."""
    from kubernetes import client, utils

    core = client.CoreV1Api(api_client)
    for ns in (RELEASE_NS, "team-a", "team-b"):
        if ns not in {n.metadata.name for n in core.list_namespace().items}:
            core.create_namespace({"metadata": {"name": ns}})
    crd = servicemonitor_crd()
    existing = client.ApiextensionsV1Api(api_client).list_custom_resource_definition().items
    if crd["metadata"]["name"] not in {c.metadata.name for c in existing}:
        utils.create_from_dict(api_client, crd)
    return kube


def servicemonitor_crd() -> dict[str, Any]:
    script = REPO / "scripts" / "kube-testenv.sh"
    out = subprocess.run([str(script), "servicemonitor-crd"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(Path(out.stdout.strip()).read_text())


def kubectl(kube: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binaries_dir() / "kubectl"), "--kubeconfig", str(kube.kubeconfig),
                           *args], input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.kube
@pytest.mark.parametrize("values", VALUES_FILES, ids=IDS)
def test_every_rendering_applies_server_side(helm: str, cluster: Any,
                                             values: Path | None) -> None:
    rendered = render(helm, values).stdout
    out = kubectl(cluster, "apply", "--server-side", "--dry-run=server",
                  "--field-manager=helm-test", "-f", "-", stdin=rendered)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == len(list(filter(None, yaml.safe_load_all(rendered))))


@pytest.fixture
def watched(namespace: str) -> str:
    """The namespace the chart's operator watches (with the claim its runs use)."""
    return namespace


@pytest.mark.kube
def test_the_operator_as_the_chart_starts_it_reconciles_a_run(
        helm: str, cluster: Any, api_client: Any, watched: str, tmp_path: Path,
        metrics_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Namespaced mode, for real: the chart's ServiceAccount and RBAC are created, and the
    operator runs with that ServiceAccount's token, the Deployment's args and its env."""
    from kubernetes import client
    from operator_harness import running_operator

    release_ns = f"{watched}-op"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": release_ns}})
    health = free_port()
    rendered = subprocess.run(
        [helm, "template", "chart-test", str(CHART), "--namespace", release_ns,
         "--set", f"watchNamespaces={{{watched}}}", "--set", f"health.port={health}",
         "--set", "metrics.enabled=false", "--set", "rbac.aggregateToDefaultRoles=false"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    objs = [d for d in yaml.safe_load_all(rendered) if d]
    # Everything but the Deployment exists for real (no kubelet would run its pod).
    rest = [o for o in objs if o["kind"] != "Deployment"]
    out = kubectl(cluster, "apply", "--server-side", "-f", "-",
                  stdin="\n---\n".join(yaml.safe_dump(o) for o in rest))
    assert out.returncode == 0, out.stderr
    (deployment,) = by_kind(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    token = kubectl(cluster, "create", "token", pod["serviceAccountName"], "-n", release_ns)
    assert token.returncode == 0, token.stderr
    kubeconfig = service_account_kubeconfig(cluster.kubeconfig, token.stdout.strip(), tmp_path)

    for env in container["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    # A process serves /metrics once, on the first port asked for: the session's, which the
    # other operator tests in this process scrape (not the chart's 8080).
    monkeypatch.setenv("SPA_OPERATOR_METRICS_PORT", str(metrics_port))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("SPA_OPERATOR_RECONCILE_SECONDS", "1")
    from spa_operator import handlers

    for cached in (handlers._config, handlers._api_client, handlers._cluster,
                   handlers._schedule_cluster):
        cached.cache_clear()  # this process's earlier operators read other settings
    assert container["command"] == ["kopf"]
    try:
        with running_operator(args=container["args"]) as runner:
            client.CustomObjectsApi(api_client).create_namespaced_custom_object(
                "alignment.spa.dev", "v1alpha1", watched, "spaalignmentruns", {
                    "apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
                    "metadata": {"name": "charted"},
                    "spec": {"model": {"name": "org/model"}, "storage": {"pvc": "spa-runs"},
                             "generator": {"backend": "openai", "gpus": 1},
                             "training": {"gpusPerNode": 1}}})
            apps = client.AppsV1Api(api_client)
            deadline = time.monotonic() + 60
            generator = None
            while generator is None and time.monotonic() < deadline:
                found = apps.list_namespaced_deployment(watched).items
                generator = found[0] if found else None
                time.sleep(0.5)
            assert generator is not None, runner.output
            (vllm,) = generator.spec.template.spec.containers
            assert vllm.image == env_value(container, "SPA_OPERATOR_VLLM_IMAGE")
            with socket.create_connection(("127.0.0.1", health), timeout=5):
                pass  # kopf's liveness endpoint, as the chart's probes hit it
    finally:
        for cached in (handlers._config, handlers._api_client, handlers._cluster,
                       handlers._schedule_cluster):
            cached.cache_clear()
    assert runner.exception is None, runner.output
    assert "Forbidden" not in runner.output, runner.output


def env_value(container: dict[str, Any], name: str) -> str:
    return next(e["value"] for e in container["env"] if e["name"] == name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_account_kubeconfig(admin: Path, token: str, tmp: Path) -> Path:
    """The admin kubeconfig's cluster with a ServiceAccount token as the user."""
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"] = [{"name": "operator", "context": {
        "cluster": config["clusters"][0]["name"], "user": "operator"}}]
    config["current-context"] = "operator"
    path = tmp / "operator-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path
