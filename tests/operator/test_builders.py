"""Manifest builders: pure functions, checked against the Kubernetes API's own models."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spa_core.spec import RunSpec
from spa_operator import names
from spa_operator.builders import (
    Owner,
    build_evaluation_job,
    build_generator_deployment,
    build_generator_network_policy,
    build_generator_service,
    build_pipeline_job,
    build_spec_config_map,
    build_trained_answers_job,
    build_training_config_map,
    build_training_job,
    build_training_service,
    generator_url,
)
from spa_operator.builders.common import COMPONENT_LABEL, QUEUE_LABEL
from spa_operator.builders.training import COMPLETION_INDEX_ANNOTATION
from spa_operator.config import OperatorConfig
from spa_operator.errors import ClusterSpecError

OWNER = Owner(name="harmless", namespace="ml", uid="0b7c5a3e-1111-2222-3333-444455556666")
CONFIG = OperatorConfig()
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def make_spec(**overrides: Any) -> RunSpec:
    doc: dict[str, Any] = {
        "model": {"name": MODEL, "tokenSecretRef": {"name": "hf", "key": "token"}},
        "generator": {"backend": "openai", "gpus": 8, "tensorParallelSize": 8,
                      "maxModelLen": 8192},
        "training": {"nodes": 2, "gpusPerNode": 8},
        "storage": {"pvc": "spa-runs"},
        "scheduling": {
            "queueName": "gpu-queue",
            "priorityClassName": "alignment",
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}],
            "backoffLimit": 3,
            "activeDeadlineSeconds": 86400,
            "ttlSecondsAfterFinished": 3600,
        },
    }
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return RunSpec.model_validate(doc)


SPEC = make_spec()


def all_children(spec: RunSpec = SPEC, iteration: int = 0) -> list[dict[str, Any]]:
    return [
        build_spec_config_map(OWNER, spec, CONFIG),
        build_generator_deployment(OWNER, spec, CONFIG, iteration),
        build_generator_service(OWNER, spec, CONFIG),
        build_pipeline_job(OWNER, spec, CONFIG, iteration),
        build_training_config_map(OWNER, spec, CONFIG),
        build_training_service(OWNER, spec, CONFIG, iteration),
        build_training_job(OWNER, spec, CONFIG, iteration),
        build_evaluation_job(OWNER, spec, CONFIG, iteration),
    ]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- shape: every manifest round-trips through the kubernetes client's typed models --------

_MODELS = {("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Service"): "V1Service",
           ("apps/v1", "Deployment"): "V1Deployment", ("batch/v1", "Job"): "V1Job"}


def _roundtrip(obj: dict[str, Any]) -> Any:
    from kubernetes.client import ApiClient

    client = ApiClient()
    model = client._ApiClient__deserialize(obj, _MODELS[(obj["apiVersion"], obj["kind"])])
    return client.sanitize_for_serialization(model)


@pytest.mark.parametrize("iteration", [0, 2])
def test_every_child_is_a_valid_kubernetes_object(iteration: int) -> None:
    for obj in all_children(iteration=iteration):
        # A misspelt field is dropped by the typed model and a wrong type is coerced: either
        # way the round trip differs.
        assert _roundtrip(obj) == obj, obj["metadata"]["name"]


def test_every_child_is_owned_by_the_run_as_controller() -> None:
    for obj in all_children():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
                       "name": "harmless", "uid": OWNER.uid, "controller": True,
                       "blockOwnerDeletion": True}
        assert obj["metadata"]["namespace"] == "ml"


def test_builders_are_pure_and_deterministic() -> None:
    assert all_children() == all_children()
    first = build_pipeline_job(OWNER, SPEC, CONFIG, 0)
    first["spec"]["template"]["spec"]["containers"][0]["env"].clear()
    assert build_pipeline_job(OWNER, SPEC, CONFIG, 0) != first


def test_no_sub_object_is_shared_between_containers() -> None:
    job = build_pipeline_job(OWNER, SPEC, CONFIG, 0)
    containers = pod_spec(job)["initContainers"] + pod_spec(job)["containers"]
    assert len({id(c["env"]) for c in containers}) == len(containers)


def test_workloads_carry_the_kueue_queue_label_and_other_children_do_not() -> None:
    for obj in all_children():
        is_workload = obj["kind"] in {"Job", "Deployment"}
        assert (obj["metadata"]["labels"].get(QUEUE_LABEL) == "gpu-queue") == is_workload


def test_no_queue_label_without_a_queue() -> None:
    spec = make_spec(scheduling={"queueName": None})
    assert all(QUEUE_LABEL not in o["metadata"]["labels"] for o in all_children(spec))


def test_pods_get_priority_class_node_selector_and_tolerations() -> None:
    for obj in all_children():
        if obj["kind"] not in {"Job", "Deployment"}:
            continue
        pod = pod_spec(obj)
        assert pod["priorityClassName"] == "alignment"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_workload_placement_replaces_the_run_wide_one() -> None:
    spec = make_spec(scheduling={**SPEC.scheduling.model_dump(by_alias=True),
                                 "pipeline": {"nodeSelector": {"pool": "cpu"}, "tolerations": []}})
    pipeline = pod_spec(build_pipeline_job(OWNER, spec, CONFIG, 0))
    assert pipeline["nodeSelector"] == {"pool": "cpu"}
    assert "tolerations" not in pipeline
    training = pod_spec(build_training_job(OWNER, spec, CONFIG, 0))
    assert training["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_jobs_carry_backoff_and_deadline_but_never_expire_on_their_own() -> None:
    for obj in all_children():
        if obj["kind"] == "Job":
            # Training retries as a group (the operator's restarts), never pod by pod.
            training = obj["metadata"]["labels"][COMPONENT_LABEL] == "training"
            assert obj["spec"]["backoffLimit"] == (0 if training else 3)
            assert obj["spec"]["podReplacementPolicy"] == "Failed"
            rules = obj["spec"]["podFailurePolicy"]["rules"]
            assert [r["action"] for r in rules] == ["Ignore", "FailJob"]
            assert rules[1]["onExitCodes"]["values"] == [2]
            assert obj["spec"]["activeDeadlineSeconds"] == 86400
            # The run's TTL (3600 here) is the run's: a child that expired mid-run would
            # take its pods' messages with it.
            assert "ttlSecondsAfterFinished" not in obj["spec"]
            assert pod_spec(obj)["restartPolicy"] == "Never"


def test_job_limits_are_omitted_when_unset() -> None:
    spec = make_spec(scheduling={"activeDeadlineSeconds": None})
    job = build_pipeline_job(OWNER, spec, CONFIG, 0)
    assert "activeDeadlineSeconds" not in job["spec"]


# --- names ---------------------------------------------------------------------------------

def test_names_are_deterministic_and_distinct_per_iteration() -> None:
    first = [o["metadata"]["name"] for o in all_children(iteration=0)]
    second = [o["metadata"]["name"] for o in all_children(iteration=1)]
    assert first == [o["metadata"]["name"] for o in all_children(iteration=0)]
    assert "harmless-pipeline-0" in first and "harmless-pipeline-1" in second
    assert "harmless-generator" in first and "harmless-generator" in second  # stable Service


def test_longest_allowed_run_name_keeps_every_child_name_a_dns_label() -> None:
    owner = Owner(name="r" * names.MAX_RUN_NAME_LENGTH, namespace="ml", uid="u")
    spec = make_spec(training={"nodes": 512, "gpusPerNode": 8, "maxRestarts": 100},
                     iterations={"count": 100})
    last = spec.iterations.count - 1
    restarts = spec.training.max_restarts
    builders = [
        build_spec_config_map(owner, spec, CONFIG),
        build_generator_deployment(owner, spec, CONFIG, last),
        build_generator_service(owner, spec, CONFIG),
        build_pipeline_job(owner, spec, CONFIG, last),
        build_training_config_map(owner, spec, CONFIG),
        build_training_service(owner, spec, CONFIG, last),
        build_training_job(owner, spec, CONFIG, last, restarts),
        build_evaluation_job(owner, spec, CONFIG, last),
    ]
    lengths = [len(o["metadata"]["name"]) for o in builders]
    hostname = names.training_pod_hostname(owner.name, last, spec.training.nodes - 1, restarts)
    assert max([*lengths, len(hostname)]) == names.DNS_LABEL_MAX


def test_schedule_name_bound_leaves_room_for_the_firing_stamp() -> None:
    run = names.scheduled_run("s" * names.MAX_SCHEDULE_NAME_LENGTH, 99_999_999)
    assert len(run) == names.MAX_RUN_NAME_LENGTH


# --- generator -----------------------------------------------------------------------------

def vllm(iteration: int = 0, spec: RunSpec = SPEC) -> dict[str, Any]:
    deployment = build_generator_deployment(OWNER, spec, CONFIG, iteration)
    (container,) = pod_spec(deployment)["containers"]
    return container


def arg(container: dict[str, Any], flag: str) -> str:
    args = container["args"]
    return args[args.index(flag) + 1]


def test_vllm_serves_the_model_with_the_openai_server_arguments() -> None:
    c = vllm()
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert arg(c, "--model") == MODEL
    assert arg(c, "--served-model-name") == MODEL
    assert arg(c, "--tensor-parallel-size") == "8"
    assert arg(c, "--max-model-len") == "8192"
    assert arg(c, "--port") == "8000"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8"}


def test_vllm_gets_the_hf_token_from_the_secret_reference_only() -> None:
    assert env_of(vllm())["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    spec = make_spec(model={"name": MODEL, "tokenSecretRef": None})
    assert "HF_TOKEN" not in env_of(vllm(spec=spec))


def test_vllm_readiness_waits_on_health_and_shm_is_in_memory() -> None:
    c = vllm()
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    volumes = {v["name"]: v for v in pod_spec(build_generator_deployment(OWNER, SPEC, CONFIG, 0))
               ["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_later_iterations_serve_the_previous_checkpoint_under_the_same_name() -> None:
    c = vllm(iteration=2)
    assert arg(c, "--model") == "/spa/storage/runs/harmless/iter-01/train/checkpoint-final"
    assert arg(c, "--served-model-name") == MODEL
    assert {"name": "storage", "mountPath": "/spa/storage", "readOnly": True} in \
        c["volumeMounts"]


def test_a_generator_serving_a_hub_model_does_not_mount_the_runs_volume() -> None:
    # A ReadWriteOnce claim attaches to one node at a time: the pipeline pod needs it.
    deployment = build_generator_deployment(OWNER, SPEC, CONFIG, 0)
    assert "storage" not in {v["name"] for v in pod_spec(deployment)["volumes"]}


def test_every_pod_runs_non_root_with_no_privilege_and_owns_a_fresh_volume() -> None:
    for obj in all_children():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = pod_spec(obj)
        assert pod["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"}}, obj["metadata"]["name"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}, c["name"]
    vllm_env = env_of(pod_spec(build_generator_deployment(OWNER, SPEC, CONFIG, 0))
                      ["containers"][0])
    assert vllm_env["HOME"] == "/tmp"  # vLLM's images assume root's HOME


def test_object_store_checkpoints_are_fetched_by_an_init_container() -> None:
    spec = make_spec(storage={"pvc": None, "uri": "s3://bucket/spa/{name}",
                              "credentialsSecretRef": "s3-creds"})
    deployment = build_generator_deployment(OWNER, spec, CONFIG, 1)
    (fetch,) = pod_spec(deployment)["initContainers"]
    assert fetch["command"][-2:] == ["s3://bucket/spa/harmless/iter-00/train/checkpoint-final",
                                     "/spa/model/iter-00/train/checkpoint-final"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert fetch["image"] == CONFIG.worker_image  # fsspec with s3fs: no torch needed
    assert arg(pod_spec(deployment)["containers"][0], "--model") == \
        "/spa/model/iter-00/train/checkpoint-final"


def test_a_model_given_as_a_uri_is_fetched_before_iteration_0() -> None:
    """How a schedule chains runs on object storage: the last run's checkpoint URI."""
    model = "s3://bucket/spa/weekly-1/iter-00/train/checkpoint-final"
    spec = make_spec(model={"name": model},
                     storage={"pvc": None, "uri": "s3://bucket/spa/{name}",
                              "credentialsSecretRef": "s3-creds"})
    deployment = build_generator_deployment(OWNER, spec, CONFIG, 0)
    (fetch,) = pod_spec(deployment)["initContainers"]
    assert fetch["command"][-2:] == [model, "/spa/model/base"]
    assert arg(pod_spec(deployment)["containers"][0], "--model") == "/spa/model/base"


def test_service_selects_every_iterations_generator_pods() -> None:
    service = build_generator_service(OWNER, SPEC, CONFIG)
    deployment = build_generator_deployment(OWNER, SPEC, CONFIG, 3)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["port"] == 8000


@pytest.mark.parametrize(("model", "field"), [
    ({"name": "embedded:smollm2-135m-instruct", "ggufFile": "other.gguf"}, "model.ggufFile"),
    ({"name": "/models/llama"}, "model.name"),
    ({"name": "some/dir", "ggufFile": "m.gguf"}, "model.ggufFile"),
])
def test_models_that_cannot_run_in_a_cluster_are_rejected_naming_the_field(
        model: dict[str, Any], field: str) -> None:
    with pytest.raises(ClusterSpecError, match=f"spec.{field}") as info:
        build_generator_deployment(OWNER, make_spec(model=model), CONFIG, 0)
    assert info.value.field == field


def test_the_embedded_model_is_exported_for_vllm_before_it_starts() -> None:
    spec = make_spec(model={"name": "embedded:smollm2-135m-instruct", "dtype": "float32"},
                     generator={"extraArgs": ["--enforce-eager", "--no-enable-chunked-prefill"]})
    deployment = build_generator_deployment(OWNER, spec, CONFIG, 0)
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    target = f"{CONFIG.model_mount}/base"
    assert init["command"] == ["spa", "export-model", "embedded:smollm2-135m-instruct", target]
    assert init["image"] == CONFIG.trainer_image  # torch and transformers: not the worker's
    assert {"name": "model", "emptyDir": {"sizeLimit": CONFIG.model_volume_size}} in pod["volumes"]
    args = vllm(spec=spec)["args"]
    assert arg(vllm(spec=spec), "--model") == target
    # The served name stays the spec's, so the pipeline's requests need no change.
    assert arg(vllm(spec=spec), "--served-model-name") == "embedded:smollm2-135m-instruct"
    assert args[-3:] == ["float32", "--enforce-eager", "--no-enable-chunked-prefill"]


def test_model_paths_on_the_run_volume_are_allowed() -> None:
    spec = make_spec(model={"name": "/spa/storage/models/llama"})
    assert arg(vllm(spec=spec), "--model") == "/spa/storage/models/llama"


# --- pipeline ------------------------------------------------------------------------------

def test_pipeline_runs_each_stage_in_order_against_the_spec_config_map() -> None:
    pod = pod_spec(build_pipeline_job(OWNER, SPEC, CONFIG, 1))
    containers = pod["initContainers"] + pod["containers"]
    assert [c["name"] for c in containers] == ["prompts", "sample", "score", "refine", "pairs"]
    for c in containers:
        assert c["args"] == [
            "spa", c["name"], "/spa/spec/run.yaml", "--run-dir", "/spa/storage/runs/harmless",
            "--iteration", "1"]
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["spec"]["configMap"]["name"] == "harmless-spec"
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == "spa-runs"


def test_spec_config_map_points_the_pipeline_at_the_generator_service() -> None:
    import yaml

    from spa_core.spec import parse_run

    cm = build_spec_config_map(OWNER, SPEC, CONFIG)
    pipeline = parse_run(yaml.safe_load(cm["data"]["run.yaml"]))
    assert pipeline.spec.generator.backend == "openai"
    assert pipeline.spec.generator.url == "http://harmless-generator.ml.svc:8000/v1"
    assert pipeline.spec.generator.url == generator_url(OWNER, CONFIG)
    assert pipeline.spec.generator.served_model_name == MODEL
    assert pipeline.spec.storage.uri == "/spa/storage/runs/harmless"
    assert pipeline.spec.sampling == SPEC.sampling and pipeline.spec.training == SPEC.training
    local = parse_run(yaml.safe_load(cm["data"]["run-local.yaml"]))
    assert local.spec.generator.backend == "transformers"


def test_object_store_credentials_come_from_the_secret_reference() -> None:
    spec = make_spec(storage={"pvc": None, "uri": "s3://bucket/{name}",
                              "credentialsSecretRef": "s3-creds"})
    for obj in all_children(spec):
        if obj["kind"] == "Job":
            for c in pod_spec(obj).get("initContainers", []) + pod_spec(obj)["containers"]:
                assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
                assert "s3://bucket/harmless" in c["args"]


def test_a_pod_local_run_directory_is_rejected() -> None:
    with pytest.raises(ClusterSpecError, match="spec.storage"):
        build_pipeline_job(OWNER, make_spec(storage={"pvc": None, "uri": "runs/{name}"}),
                           CONFIG, 0)


def test_pipeline_gets_the_generator_api_key_from_its_secret() -> None:
    spec = make_spec(generator={**SPEC.generator.model_dump(by_alias=True),
                                "apiKeySecretRef": {"name": "vllm", "key": "api-key"}})
    (pairs,) = pod_spec(build_pipeline_job(OWNER, spec, CONFIG, 0))["containers"]
    assert env_of(pairs)["SPA_OPENAI_API_KEY"] == {
        "secretKeyRef": {"name": "vllm", "key": "api-key"}}
    assert env_of(vllm(spec=spec))["VLLM_API_KEY"] == {
        "secretKeyRef": {"name": "vllm", "key": "api-key"}}


# --- training ------------------------------------------------------------------------------

def test_training_is_an_indexed_job_with_one_pod_per_node() -> None:
    job = build_training_job(OWNER, SPEC, CONFIG, 0)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert pod_spec(job)["subdomain"] == build_training_service(OWNER, SPEC, CONFIG, 0)[
        "metadata"]["name"]


def test_torchrun_is_wired_like_kubeflows_trainer() -> None:
    job = build_training_job(OWNER, SPEC, CONFIG, 0)
    (c,) = pod_spec(job)["containers"]
    env = env_of(c)
    assert env["PET_NNODES"] == "2"
    assert env["PET_NPROC_PER_NODE"] == "8"
    assert env["PET_NODE_RANK"] == {"fieldRef": {
        "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}
    assert env["PET_MASTER_ADDR"] == "harmless-train-0-0.harmless-train-0"
    assert env["PET_MASTER_PORT"] == "29500"
    assert c["command"] == ["spa-torchrun", "--no-python"]
    assert c["args"][:3] == ["spa", "train", "/spa/spec/run-local.yaml"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_headless_service_publishes_pods_before_they_are_ready() -> None:
    svc = build_training_service(OWNER, SPEC, CONFIG, 0)
    job = build_training_job(OWNER, SPEC, CONFIG, 0)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(("strategy", "file"), [("fsdp", "fsdp.json"),
                                                ("deepspeed", "deepspeed.json")])
def test_sharding_config_is_mounted_from_a_config_map(strategy: str, file: str) -> None:
    spec = make_spec(training={"nodes": 2, "gpusPerNode": 8, "strategy": strategy})
    cm = build_training_config_map(OWNER, spec, CONFIG)
    assert list(cm["data"]) == [file]
    config = OperatorConfig(trainer_has_deepspeed=True)  # an image built FROM the project's
    (c,) = pod_spec(build_training_job(OWNER, spec, config, 0))["containers"]
    mounted = env_of(c)["SPA_DISTRIBUTED_CONFIG"]
    assert mounted == f"/spa/distributed/{file}"
    # The trainer, under torchrun, turns the mounted file into its TrainingArguments.
    from spa_core.training.distributed import training_arguments

    args = training_arguments({"SPA_DISTRIBUTED_CONFIG": mounted, "WORLD_SIZE": "16"})
    assert args == ({"fsdp": True, "fsdp_config": mounted} if strategy == "fsdp"
                    else {"deepspeed": mounted})
    assert json.loads(cm["data"][file])


def test_deepspeed_is_refused_unless_the_trainer_image_has_it() -> None:
    spec = make_spec(training={"nodes": 2, "gpusPerNode": 8, "strategy": "deepspeed"})
    with pytest.raises(ClusterSpecError, match=r"spec.training.strategy: deepspeed, but the "
                                               r"trainer image \(.*spa-trainer.*\) has no DeepSpeed"):
        build_training_job(OWNER, spec, CONFIG, 0)
    config = OperatorConfig.from_env({"SPA_OPERATOR_TRAINER_HAS_DEEPSPEED": "true"})
    assert build_training_job(OWNER, spec, config, 0)["kind"] == "Job"


def test_cpu_training_requests_no_gpu() -> None:
    spec = make_spec(training={"nodes": 1, "gpusPerNode": 0})
    (c,) = pod_spec(build_training_job(OWNER, spec, CONFIG, 0))["containers"]
    assert c["resources"] == {"requests": {"cpu": CONFIG.trainer_cpu,
                                           "memory": CONFIG.trainer_memory}}
    assert env_of(c)["PET_NPROC_PER_NODE"] == "1"


def test_a_run_that_leaves_out_the_gpus_per_node_is_not_built_for_cpus() -> None:
    spec = SPEC.model_copy(update={"training": SPEC.training.model_copy(
        update={"gpus_per_node": None})})  # what a spec without the field parses to
    benchmarked = spec.model_copy(update={"evaluation": BENCHMARKED.evaluation})
    for build, run in ((build_training_job, spec), (build_evaluation_job, benchmarked)):
        with pytest.raises(ClusterSpecError, match=r"spec.training.gpusPerNode: required in a "
                                                   r"cluster.*or 0 to train on CPUs"):
            build(OWNER, run, CONFIG, 0)


# --- evaluation ----------------------------------------------------------------------------

BENCHMARKED = make_spec(evaluation={"benchmarks": {"tasks": ["arc_easy"]}})


def test_evaluation_asks_vllm_for_answers_and_verdicts_then_writes_the_report() -> None:
    # Two clients of the generator Service, in the slim worker image, without GPUs: first
    # the trained checkpoint's answers, then the starting policy's answers and verdicts.
    answers = build_trained_answers_job(OWNER, SPEC, CONFIG, 0)
    assert answers["metadata"]["name"] == "harmless-answers-0"
    (a,) = pod_spec(answers)["containers"]
    assert a["args"] == ["spa", "evaluate", "/spa/spec/run.yaml", "--run-dir",
                         "/spa/storage/runs/harmless", "--iteration", "0",
                         "--trained-answers-only"]
    job = build_evaluation_job(OWNER, SPEC, CONFIG, 0)
    (c,) = pod_spec(job)["initContainers"]
    assert c["args"][:3] == ["spa", "evaluate", "/spa/spec/run.yaml"]
    for container in (a, c):
        assert container["image"] == CONFIG.worker_image
        assert "nvidia.com/gpu" not in str(container["resources"])
        assert "SPA_JUDGE_API_KEY" not in env_of(container)  # self-judged: no external key
    judged = make_spec(evaluation={"judge": {"url": "https://api.openai.com/v1", "model": "gpt-4o",
                                             "apiKeySecretRef": {"name": "judge", "key": "k"}}},
                       generator={"backend": "openai",
                                  "apiKeySecretRef": {"name": "vllm", "key": "key"}})
    (c,) = pod_spec(build_evaluation_job(OWNER, judged, CONFIG, 0))["initContainers"]
    assert env_of(c)["SPA_JUDGE_API_KEY"] == {"secretKeyRef": {"name": "judge", "key": "k"}}
    (a,) = pod_spec(build_trained_answers_job(OWNER, judged, CONFIG, 0))["containers"]
    for container in (a, c):
        assert env_of(container)["SPA_OPENAI_API_KEY"] == {
            "secretKeyRef": {"name": "vllm", "key": "key"}}
    (report,) = pod_spec(job)["containers"]
    assert report["args"] == ["spa", "report", "/spa/storage/runs/harmless", "--spec",
                              "/spa/spec/run.yaml"]
    assert "nvidia.com/gpu" not in str(report["resources"])


def test_benchmarks_run_in_the_trainer_image_on_one_gpu() -> None:
    (c,) = pod_spec(build_evaluation_job(OWNER, BENCHMARKED, CONFIG, 0))["initContainers"]
    assert c["image"] == CONFIG.trainer_image
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_operator_config_reads_its_environment() -> None:
    config = OperatorConfig.from_env({"SPA_OPERATOR_WORKER_IMAGE": "w:1",
                                      "SPA_OPERATOR_VLLM_PORT": "9000",
                                      "SPA_OPERATOR_NETWORK_POLICY": "True"})
    assert config.worker_image == "w:1" and config.vllm_port == 9000
    assert config.network_policy is True
    with pytest.raises(ValueError, match=r"\$SPA_OPERATOR_NETWORK_POLICY='yes': expected true"):
        OperatorConfig.from_env({"SPA_OPERATOR_NETWORK_POLICY": "yes"})
    with pytest.raises(ValueError, match=r"\$SPA_OPERATOR_METRICS_PORT='x': expected an integer"):
        OperatorConfig.from_env({"SPA_OPERATOR_METRICS_PORT": "x"})


def test_only_the_runs_pipeline_and_evaluation_pods_may_reach_its_generator() -> None:
    policy = build_generator_network_policy(OWNER, SPEC, CONFIG)
    deployment = build_generator_deployment(OWNER, SPEC, CONFIG, 0)
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods.items()
    (rule,) = policy["spec"]["ingress"]

    def admitted(job: dict[str, Any]) -> bool:
        labels = job["spec"]["template"]["metadata"]["labels"].items()
        return any(peer["podSelector"]["matchLabels"].items() <= labels for peer in rule["from"])

    assert admitted(build_pipeline_job(OWNER, SPEC, CONFIG, 0))
    assert admitted(build_trained_answers_job(OWNER, SPEC, CONFIG, 0))
    assert admitted(build_evaluation_job(OWNER, SPEC, CONFIG, 0))
    assert not admitted(build_training_job(OWNER, SPEC, CONFIG, 0))
    assert rule["ports"] == [{"protocol": "TCP", "port": CONFIG.vllm_port}]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


# --- resources, probes, the model cache ----------------------------------------------------

def test_gpu_pods_request_cpu_and_memory_with_their_gpus_and_limit_only_the_gpus() -> None:
    c = vllm()
    assert c["resources"] == {
        "requests": {"cpu": CONFIG.generator_cpu, "memory": CONFIG.generator_memory,
                     "nvidia.com/gpu": "8"},
        "limits": {"nvidia.com/gpu": "8"}}
    (trainer,) = pod_spec(build_training_job(OWNER, SPEC, CONFIG, 0))["containers"]
    assert trainer["resources"]["requests"] == {
        "cpu": CONFIG.trainer_cpu, "memory": CONFIG.trainer_memory, "nvidia.com/gpu": "8"}
    config = OperatorConfig.from_env({"SPA_OPERATOR_GENERATOR_CPU": "500m",
                                      "SPA_OPERATOR_TRAINER_MEMORY": "2Gi"})
    assert vllm_of(build_generator_deployment(OWNER, SPEC, config, 0))["resources"][
        "requests"]["cpu"] == "500m"
    (trainer,) = pod_spec(build_training_job(OWNER, SPEC, config, 0))["containers"]
    assert trainer["resources"]["requests"]["memory"] == "2Gi"


def vllm_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod_spec(deployment)["containers"]
    return c


def test_vllm_probes_tolerate_a_busy_server() -> None:
    c = vllm()
    # The kubelet's default timeout is 1 s: a server saturated by the pipeline would be
    # restarted by its liveness probe in the middle of a batch.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["timeoutSeconds"] >= 10, probe
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 3600


def test_data_parallel_vllm_gets_its_flag_only_when_asked() -> None:
    assert "--data-parallel-size" not in vllm()["args"]
    spec = make_spec(generator={"gpus": 8, "tensorParallelSize": 2, "dataParallelSize": 4})
    c = vllm(spec=spec)
    assert arg(c, "--data-parallel-size") == "4" and arg(c, "--tensor-parallel-size") == "2"


def test_a_fetched_model_is_copied_into_a_bounded_volume() -> None:
    spec = make_spec(model={"name": "s3://bucket/models/llama"},
                     storage={"pvc": None, "uri": "s3://bucket/spa/{name}"})
    pod = pod_spec(build_generator_deployment(OWNER, spec, CONFIG, 0))
    (model,) = [v for v in pod["volumes"] if v["name"] == "model"]
    assert model["emptyDir"] == {"sizeLimit": CONFIG.model_volume_size}
    (fetch,) = pod["initContainers"]
    assert fetch["resources"]["limits"]["memory"]
    # The init container does not raise the pod's request (the larger of the init
    # containers' and the containers' sum) above vLLM's, even with the chart set small.
    from kubernetes.utils import parse_quantity

    small = OperatorConfig(generator_cpu="500m", generator_memory="2Gi")
    pod = pod_spec(build_generator_deployment(OWNER, spec, small, 0))
    (fetch,), (server,) = pod["initContainers"], pod["containers"]
    for resource in ("cpu", "memory"):
        assert parse_quantity(fetch["resources"]["requests"][resource]) <= \
            parse_quantity(server["resources"]["requests"][resource]), resource


def test_a_model_cache_claim_is_hf_home_of_every_pod_that_loads_weights() -> None:
    for obj in all_children():
        if obj["kind"] in ("Deployment", "Job"):
            assert "model-cache" not in json.dumps(obj)
    spec = make_spec(storage={"modelCachePvc": "hf-cache"})
    benchmarked = make_spec(storage={"modelCachePvc": "hf-cache"},
                            evaluation=BENCHMARKED.evaluation.model_dump(by_alias=True))
    loaders = {"vllm": build_generator_deployment(OWNER, spec, CONFIG, 0),
               "trainer": build_training_job(OWNER, spec, CONFIG, 0),
               "evaluate": build_evaluation_job(OWNER, benchmarked, CONFIG, 0)}
    for name, obj in loaders.items():
        pod = pod_spec(obj)
        assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in \
            pod["volumes"], name
        (c,) = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
        assert {"name": "model-cache", "mountPath": "/spa/cache"} in c["volumeMounts"], name
        assert env_of(c)["HF_HOME"] == "/spa/cache/huggingface", name
    # The pipeline and evaluation talk to vLLM over HTTP: they load no weights and do not
    # hold the claim (benchmarks load both models in-process).
    for job in (build_pipeline_job, build_trained_answers_job, build_evaluation_job):
        assert "model-cache" not in json.dumps(job(OWNER, spec, CONFIG, 0))


# --- podTemplate overrides -----------------------------------------------------------------

def with_templates(run_wide: dict[str, Any] | None = None,
                   **workloads: dict[str, Any]) -> RunSpec:
    scheduling = SPEC.scheduling.model_dump(by_alias=True, exclude_none=True)
    if run_wide is not None:
        scheduling["podTemplate"] = run_wide
    for workload, template in workloads.items():
        scheduling[workload] = {"podTemplate": template}
    return make_spec(scheduling=scheduling)


def test_a_run_wide_pod_template_reaches_every_workload_and_stays_valid() -> None:
    spec = with_templates({
        "metadata": {"labels": {"team": "align"},
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "rdma-net"}},
        "spec": {"imagePullSecrets": [{"name": "registry"}], "serviceAccountName": "spa-sa"}})
    for obj in all_children(spec):
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        template = obj["spec"]["template"]
        assert template["metadata"]["labels"]["team"] == "align"
        assert template["metadata"]["labels"][COMPONENT_LABEL]  # the operator's stay
        assert template["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/networks": "rdma-net"}
        assert template["spec"]["imagePullSecrets"] == [{"name": "registry"}]
        assert template["spec"]["serviceAccountName"] == "spa-sa"
        assert _roundtrip(obj) == obj


def test_a_workload_template_merges_containers_env_and_mounts_by_key() -> None:
    spec = with_templates(
        {"spec": {"hostIPC": False, "enableServiceLinks": False}},
        training={"spec": {
            "hostIPC": True,
            "containers": [{
                "name": "trainer",
                "env": [{"name": "NCCL_IB_HCA", "value": "mlx5"},
                        {"name": "PET_NNODES", "value": "2"}],
                "resources": {"limits": {"rdma/ib": "1"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }, {"name": "sidecar", "image": "busybox", "command": ["sleep", "inf"]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }})
    pod = pod_spec(build_training_job(OWNER, spec, CONFIG, 0))
    base = pod_spec(build_training_job(OWNER, SPEC, CONFIG, 0))
    trainer, sidecar = pod["containers"]
    assert trainer["name"] == "trainer" and sidecar["name"] == "sidecar"
    env = [e["name"] for e in trainer["env"]]
    # Items keep their place; new ones come after; the workload's value beats the run's.
    assert env[:len(base["containers"][0]["env"])] == [e["name"] for e in
                                                       base["containers"][0]["env"]]
    assert env_of(trainer)["NCCL_IB_HCA"] == "mlx5" and env[-1] == "NCCL_IB_HCA"
    assert env.count("PET_NNODES") == 1 and env_of(trainer)["PET_NNODES"] == "2"
    # The workload's template is merged after the run-wide one.
    assert pod["hostIPC"] is True and pod["enableServiceLinks"] is False
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "8", "rdma/ib": "1"}
    assert trainer["args"] == base["containers"][0]["args"]
    assert {"name": "data", "mountPath": "/data"} in trainer["volumeMounts"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in trainer["volumeMounts"]
    assert [v["name"] for v in pod["volumes"]] == [v["name"] for v in base["volumes"]] + ["data"]
    # Other workloads got the run-wide part only.
    generator = pod_spec(build_generator_deployment(OWNER, spec, CONFIG, 0))
    assert generator["hostIPC"] is False and len(generator["containers"]) == 1


def test_two_new_items_with_one_key_in_one_override_become_one() -> None:
    spec = with_templates(training={"spec": {"containers": [{
        "name": "trainer",
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"},
                {"name": "NCCL_DEBUG", "valueFrom": None, "value": "WARN"}],
    }]}})
    (trainer,) = pod_spec(build_training_job(OWNER, spec, CONFIG, 0))["containers"]
    assert [e for e in trainer["env"] if e["name"] == "NCCL_DEBUG"] == [
        {"name": "NCCL_DEBUG", "value": "WARN"}]


def test_overriding_a_volume_replaces_its_source_and_null_removes_a_field() -> None:
    spec = with_templates(training={"spec": {
        "volumes": [{"name": "dshm", "hostPath": {"path": "/dev/shm"}}],
        "priorityClassName": None}})
    pod = pod_spec(build_training_job(OWNER, spec, CONFIG, 0))
    (dshm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert dshm == {"name": "dshm", "hostPath": {"path": "/dev/shm"}}  # no emptyDir left
    assert "priorityClassName" not in pod


@pytest.mark.parametrize(("template", "field"), [
    ({"spec": {"restartPolicy": "Always"}}, "scheduling.pipeline.podTemplate.spec.restartPolicy"),
    ({"spec": {"containers": [{"name": "pairs", "command": ["sh"]}]}},
     "scheduling.pipeline.podTemplate.spec.containers[name=pairs].command"),
    ({"spec": {"initContainers": [{"name": "sample", "args": ["x"]}]}},
     "scheduling.pipeline.podTemplate.spec.initContainers[name=sample].args"),
    ({"metadata": {"labels": {COMPONENT_LABEL: "x"}}},
     f"scheduling.pipeline.podTemplate.metadata.labels.{COMPONENT_LABEL}"),
    ({"spec": {"volumes": [{"emptyDir": {}}]}},
     "scheduling.pipeline.podTemplate.spec.volumes[0]"),
    ({"spec": {"$patch": "replace"}}, "scheduling.pipeline.podTemplate.spec.$patch"),
])
def test_what_the_operator_owns_cannot_be_overridden(template: dict[str, Any],
                                                     field: str) -> None:
    spec = with_templates(pipeline=template)
    with pytest.raises(ClusterSpecError) as err:
        build_pipeline_job(OWNER, spec, CONFIG, 0)
    assert f"spec.{field}:" in str(err.value)


def test_overrides_are_checked_in_the_spec_too() -> None:
    from spa_core.spec import SpecError, parse_run

    doc = {"apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
           "metadata": {"name": "x"},
           "spec": {"model": {"name": MODEL},
                    "scheduling": {"podTemplate": {"metadata": {"labels": {"a": "b"}},
                                                   "spce": {}}}}}
    with pytest.raises(SpecError, match=r"podTemplate\.spce"):
        parse_run(doc)


def test_object_store_training_gets_a_scratch_volume_as_tmpdir() -> None:
    assert "scratch" not in json.dumps(build_training_job(OWNER, SPEC, CONFIG, 0))
    spec = make_spec(storage={"pvc": None, "uri": "s3://bucket/spa/{name}"})
    pod = pod_spec(build_training_job(OWNER, spec, CONFIG, 0))
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    (trainer,) = pod["containers"]
    assert env_of(trainer)["TMPDIR"] == "/spa/scratch"
    assert {"name": "scratch", "mountPath": "/spa/scratch"} in trainer["volumeMounts"]
    # A podTemplate puts it on the node's NVMe disk instead.
    local = make_spec(storage={"pvc": None, "uri": "s3://bucket/spa/{name}"},
                      scheduling={"training": {"podTemplate": {"spec": {"volumes": [
                          {"name": "scratch", "hostPath": {"path": "/mnt/nvme/spa"}}]}}}})
    pod = pod_spec(build_training_job(OWNER, local, CONFIG, 0))
    assert {"name": "scratch", "hostPath": {"path": "/mnt/nvme/spa"}} in pod["volumes"]
