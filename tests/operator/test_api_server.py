"""The CRDs on a real kube-apiserver: it accepts valid runs and rejects invalid ones itself.

What `kubectl apply` would hit: schema bounds, unknown fields (strict field validation, as
kubectl sends by default), CEL rules, immutability once started, printer columns, and the
children the builders make (server-side dry run against the real API validation).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from spa_core.schedule_spec import SPAAlignmentSchedule
from spa_core.spec import SPAAlignmentRun, SpecError, parse_run
from spa_operator import builders, names
from spa_operator.config import OperatorConfig

pytestmark = pytest.mark.kube

GROUP, VERSION = "alignment.spa.dev", "v1alpha1"
RUNS, SCHEDULES = "spaalignmentruns", "spaalignmentschedules"


def run_doc(name: str = "harmless", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "prompts": {"dataset": "PKU-Alignment/PKU-SafeRLHF", "column": "prompt", "count": 1000},
        "sampling": {"numSamples": 5},
        "generator": {"backend": "openai", "gpus": 8, "tensorParallelSize": 8},
        "training": {"nodes": 1, "gpusPerNode": 8},
        "storage": {"pvc": "spa-runs"},
        "scheduling": {"queueName": "gpu",
                       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
    }
    for key, value in spec.items():
        base[key] = value
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentRun",
            "metadata": {"name": name}, "spec": base}


def schedule_doc(name: str = "weekly", **spec: Any) -> dict[str, Any]:
    body = {"schedule": "0 3 * * 0", "timeZone": "Europe/Paris",
            "runTemplate": run_doc()["spec"], **spec}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentSchedule",
            "metadata": {"name": name}, "spec": body}


def custom(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


def create(api_client: Any, namespace: str, doc: dict[str, Any],
           plural: str = RUNS) -> dict[str, Any]:
    return custom(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, doc, field_validation="Strict")


def rejection(api_client: Any, namespace: str, doc: dict[str, Any], plural: str = RUNS) -> str:
    """The API server's message rejecting `doc` (fails if it is accepted)."""
    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException) as info:
        create(api_client, namespace, doc, plural)
    assert info.value.status in (400, 422), info.value.body  # 400: strict decoding (unknown field)
    return json.loads(info.value.body)["message"]


def get_table(api_client: Any, path: str) -> dict[str, Any]:
    """GET `path` as a meta.k8s.io Table: what `kubectl get` prints."""
    method, url, headers, _, _ = api_client.param_serialize(
        "GET", path, header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"])
    response = api_client.call_api(method, url, header_params=headers)
    response.read()
    return json.loads(response.data)


def with_spec(path: str, value: Any, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(doc or run_doc())
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return doc


# --- accepted --------------------------------------------------------------------------------

def test_valid_run_is_accepted_as_written(api_client: Any, namespace: str) -> None:
    doc = run_doc()
    created = create(api_client, namespace, doc)
    assert created["spec"] == doc["spec"]  # no defaults injected: pydantic owns them
    assert parse_run(created).spec.sampling.num_samples == 5


def test_minimal_run_is_accepted(api_client: Any, namespace: str) -> None:
    doc = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentRun",
           "metadata": {"name": "minimal"},
           "spec": {"prompts": {"builtin": "honesty"}, "training": {"gpusPerNode": 0}}}
    create(api_client, namespace, doc)


def test_a_cluster_run_must_say_how_many_gpus_each_training_node_has(
        api_client: Any, namespace: str) -> None:
    doc = run_doc()
    del doc["spec"]["training"]["gpusPerNode"]
    # For `spa run` the field is optional (a GPU when one is visible) ...
    assert parse_run(doc).spec.training.gpus_per_node is None
    # ... but in a cluster, left out, it would silently mean CPU training.
    assert "spec.training.gpusPerNode is required in a cluster" in \
        rejection(api_client, namespace, doc)
    schedule = schedule_doc(runTemplate=doc["spec"])
    assert "spec.runTemplate.training.gpusPerNode is required in a cluster" in \
        rejection(api_client, namespace, schedule, SCHEDULES)
    no_spec = {k: v for k, v in doc.items() if k != "spec"}
    assert "spec" in rejection(api_client, namespace, no_spec)


def test_get_shows_the_printer_columns(api_client: Any, namespace: str) -> None:
    create(api_client, namespace, run_doc())
    custom(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, RUNS, "harmless",
        {"status": {"phase": "Running", "iteration": 0, "stage": "Pipeline",
                    "counts": {"pairs": 1234},
                    "conditions": [{"type": "Ready", "status": "False", "reason": "Sampling",
                                    "message": "", "lastTransitionTime": _now()}]}})
    table = get_table(api_client, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{RUNS}")
    headers = [c["name"] for c in table["columnDefinitions"]]
    assert headers[:1] == ["Name"]
    assert {"Phase", "Iteration", "Pairs", "Ready", "Age"} <= set(headers)
    (row,) = table["rows"]
    cells = dict(zip(headers, row["cells"], strict=True))
    assert (cells["Name"], cells["Phase"], cells["Iteration"], cells["Pairs"], cells["Ready"]) \
        == ("harmless", "Running", 0, 1234, "False")


def test_kubectl_get_spar_shows_the_columns(kube: Any, api_client: Any, namespace: str) -> None:
    from kube_testenv import binaries_dir

    built = binaries_dir() / "kubectl"  # built by scripts/kube-testenv.sh, the server's version
    kubectl = str(built) if built.is_file() else shutil.which("kubectl")
    assert kubectl is not None, "no kubectl: run scripts/kube-testenv.sh build"
    create(api_client, namespace, run_doc())
    out = subprocess.run([kubectl, "--kubeconfig", str(kube.kubeconfig), "-n", namespace,
                          "get", "spar"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "ITERATION", "PAIRS", "READY", "AGE"]


def test_valid_schedule_is_accepted(api_client: Any, namespace: str) -> None:
    doc = schedule_doc()
    create(api_client, namespace, doc, SCHEDULES)
    SPAAlignmentSchedule.model_validate(doc)


# --- rejected by the API server, with a message naming the field ------------------------------

INVALID_RUNS = [
    # (what, document, fragments of the API server's message)
    ("n above its bound", with_spec("spec.sampling.numSamples", 99),
     ["spec.sampling.numSamples", "less than or equal to 16"]),
    ("rho must be positive", with_spec("spec.denoising.rho", 0),
     ["spec.denoising.rho", "greater than 0"]),
    ("unknown enum value", with_spec("spec.training.loss", "ppo"),
     ["spec.training.loss", "Unsupported value", '"spa"']),
    ("unknown field", with_spec("spec.sampling.nSamples", 4),
     ['unknown field "spec.sampling.nSamples"']),
    ("bad secret name", with_spec("spec.model.tokenSecretRef", {"name": "Bad_Name", "key": "t"}),
     ["spec.model.tokenSecretRef.name", "should match"]),
    ("two prompt sources", with_spec("spec.prompts", {"builtin": "mixed", "path": "s3://p.jsonl"}),
     ["spec.prompts", "set exactly one of builtin, path, dataset"]),
    ("no prompt source", with_spec("spec.prompts", {"split": "test"}),
     ["spec.prompts", "set exactly one of builtin, path, dataset"]),
    ("completion longer than the whole", with_spec("spec.training.maxCompletionLength", 4096),
     ["spec.training.maxCompletionLength", "must be less than maxLength"]),
    ("tensor parallel beyond the GPUs",
     with_spec("spec.generator", {"gpus": 2, "tensorParallelSize": 4}),
     ["spec.generator.tensorParallelSize", "dataParallelSize must not exceed gpus"]),
    ("data parallel beyond the GPUs",
     with_spec("spec.generator", {"gpus": 4, "tensorParallelSize": 2, "dataParallelSize": 4}),
     ["spec.generator.tensorParallelSize", "dataParallelSize must not exceed gpus"]),
    ("name too long for its children", run_doc("r" * (names.MAX_RUN_NAME_LENGTH + 1)),
     ["metadata.name", f"at most {names.MAX_RUN_NAME_LENGTH} characters"]),
    ("name starting with a digit", run_doc("1st-run"),
     ["metadata.name", "starting with a letter"]),
]


@pytest.mark.parametrize(("what", "doc", "fragments"), INVALID_RUNS,
                         ids=[case[0] for case in INVALID_RUNS])
def test_invalid_run_is_rejected_with_a_readable_message(
        api_client: Any, namespace: str, what: str, doc: dict[str, Any],
        fragments: list[str]) -> None:
    message = rejection(api_client, namespace, doc)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(("what", "doc"), [(c[0], c[1]) for c in INVALID_RUNS
                                           if not c[0].startswith("name")],
                         ids=[c[0] for c in INVALID_RUNS if not c[0].startswith("name")])
def test_what_the_api_server_rejects_pydantic_rejects_too(what: str, doc: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        parse_run(doc)


INVALID_SCHEDULES = [
    ("not a cron expression", schedule_doc(schedule="every sunday"), ["spec.schedule"]),
    ("unknown concurrency policy", schedule_doc(concurrencyPolicy="Queue"),
     ["spec.concurrencyPolicy", "Unsupported value"]),
    ("negative history", schedule_doc(failedRunsHistoryLimit=-1),
     ["spec.failedRunsHistoryLimit"]),
    ("template validated like a run",
     schedule_doc(runTemplate=with_spec("spec.sampling.numSamples", 1)["spec"]),
     ["spec.runTemplate.sampling.numSamples"]),
    ("name too long for its runs", schedule_doc("s" * (names.MAX_SCHEDULE_NAME_LENGTH + 1)),
     [f"at most {names.MAX_SCHEDULE_NAME_LENGTH} characters"]),
]


@pytest.mark.parametrize(("what", "doc", "fragments"), INVALID_SCHEDULES,
                         ids=[case[0] for case in INVALID_SCHEDULES])
def test_invalid_schedule_is_rejected(api_client: Any, namespace: str, what: str,
                                      doc: dict[str, Any], fragments: list[str]) -> None:
    message = rejection(api_client, namespace, doc, SCHEDULES)
    for fragment in fragments:
        assert fragment in message, message


# --- immutability ----------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _patch(api_client: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, RUNS, "harmless", body)


def test_spec_can_change_until_the_run_starts(api_client: Any, namespace: str) -> None:
    create(api_client, namespace, run_doc())
    patched = _patch(api_client, namespace, {"spec": {"sampling": {"numSamples": 3}}})
    assert patched["spec"]["sampling"]["numSamples"] == 3


def test_spec_is_immutable_once_started_except_suspend(api_client: Any, namespace: str) -> None:
    from kubernetes.client.rest import ApiException

    create(api_client, namespace, run_doc())
    custom(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, RUNS, "harmless",
        {"status": {"phase": "Running", "startTime": _now()}})
    for change in ({"sampling": {"numSamples": 3}}, {"model": {"revision": "main"}},
                   {"evaluation": {"enabled": False}}):
        with pytest.raises(ApiException) as info:
            _patch(api_client, namespace, {"spec": change})
        assert info.value.status == 422
        assert "spec is immutable once the run has started" in json.loads(info.value.body)[
            "message"]
    assert _patch(api_client, namespace, {"spec": {"suspend": True}})["spec"]["suspend"] is True
    assert _patch(api_client, namespace, {"spec": {"suspend": False}})["spec"]["suspend"] is False
    # Labels and annotations are not spec: GitOps tools may still touch them.
    _patch(api_client, namespace, {"metadata": {"labels": {"team": "safety"}}})


# --- the builders' children pass the API server's own validation ----------------------------

def test_every_child_passes_server_side_validation(api_client: Any, namespace: str) -> None:
    from kubernetes import utils

    created = create(api_client, namespace, run_doc())
    run = SPAAlignmentRun.model_validate(created)
    owner = builders.Owner(name=run.name, namespace=namespace, uid=created["metadata"]["uid"])
    config = OperatorConfig()
    children = [
        builders.build_spec_config_map(owner, run.spec, config),
        builders.build_generator_deployment(owner, run.spec, config, 0),
        builders.build_generator_deployment(owner, run.spec, config, 1),
        builders.build_generator_service(owner, run.spec, config),
        builders.build_generator_network_policy(owner, run.spec, config),
        builders.build_pipeline_job(owner, run.spec, config, 0),
        builders.build_training_config_map(owner, run.spec, config),
        builders.build_training_service(owner, run.spec, config, 0),
        builders.build_training_job(owner, run.spec, config, 0),
        builders.build_evaluation_job(owner, run.spec, config, 0),
    ]
    for child in children:
        utils.create_from_dict(api_client, child, namespace=namespace, dry_run="All")


# --- the examples ----------------------------------------------------------------------------

_EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
#: For `spa run` on a laptop: it leaves training.gpusPerNode to the machine (a visible GPU).
LOCAL_EXAMPLE = _EXAMPLES_DIR / "local.yaml"
EXAMPLES = sorted({*_EXAMPLES_DIR.glob("*.yaml"), *_EXAMPLES_DIR.glob("gitops/schedule/*-*.yaml")}
                  - {LOCAL_EXAMPLE})


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted_by_the_api_server(api_client: Any, namespace: str,
                                                 path: Path) -> None:
    import yaml

    for doc in yaml.safe_load_all(path.read_text()):
        if doc.get("kind") == "SPAAlignmentRun":
            parse_run(doc)
            create(api_client, namespace, doc)
        elif doc.get("kind") == "SPAAlignmentSchedule":
            SPAAlignmentSchedule.model_validate(doc)
            create(api_client, namespace, doc, SCHEDULES)


def test_the_local_example_is_refused_by_a_cluster_naming_what_it_lacks(
        api_client: Any, namespace: str) -> None:
    import yaml

    doc = yaml.safe_load(LOCAL_EXAMPLE.read_text())
    parse_run(doc)
    assert "spec.training.gpusPerNode is required in a cluster" in \
        rejection(api_client, namespace, doc)
