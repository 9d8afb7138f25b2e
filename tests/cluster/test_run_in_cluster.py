"""`kubectl apply -f examples/cluster-cpu.yaml`, for real: the operator installed by its chart,
vLLM for CPUs serving the embedded model as the generator Deployment (exported from its GGUF
file by an init container in the trainer image), the pipeline Job's stages in the slim worker
image against it, the training Job's two pods under torchrun over gloo, then the evaluation
against vLLM: the trained checkpoint served from the run's volume answers first, then the
starting policy, served again, answers and judges, and the report is written.

The run is the example with a model cache claim and pod template overrides added, as a
platform team would adapt it to their cluster (`TUNED`). The one run also goes through three
faults, as a cluster deals them: the operator's pod is
deleted while the pipeline runs, a training pod is deleted once training has written a
checkpoint, and the finished pipeline's Job is deleted while training runs again. The run
must still succeed, with no child created twice and nothing finished redone. The tests below
share the run and each assert one part of what a user would check.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster_env import REPO, Cluster
from spa_core.layout import MANIFEST
from waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(3600)]

EXAMPLE = REPO / "examples" / "cluster-cpu.yaml"
DOC = yaml.safe_load(EXAMPLE.read_text())
NAME = DOC["metadata"]["name"]
SPEC = DOC["spec"]
RELEASE_NAMESPACE = "spa-run-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=spa-operator"
RUN_SELECTOR = f"alignment.spa.dev/run={NAME}"
#: What the run adds to the example: Hugging Face's cache on a claim, an annotation on every
#: pod, and for the trainer an environment variable and a scratch volume.
TUNED = {
    "storage": {"modelCachePvc": "model-cache"},
    "scheduling": {
        "podTemplate": {"metadata": {"annotations": {"example.com/team": "alignment"}}},
        "training": {"podTemplate": {"spec": {
            "containers": [{"name": "trainer", "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}]}}},
    },
}


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[str]:
    op, worker, trainer, vllm = (cluster.images[t]
                                 for t in ("operator", "worker", "trainer", "vllm-cpu"))
    repository, tag = op.rsplit(":", 1)
    cluster.helm("install", "spa-run", str(REPO / "charts" / "spa-operator"),
                 "--namespace", RELEASE_NAMESPACE, "--create-namespace",
                 "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                 "--set", "image.pullPolicy=Never", "--set", "workloadImages.pullPolicy=Never",
                 "--set", f"workloadImages.worker={worker}",
                 # vLLM for CPUs in place of vLLM's image (a node without GPUs).
                 "--set", f"workloadImages.vllm={vllm}",
                 "--set", f"workloadImages.trainer={trainer}",
                 "--set", "operator.pipelineMemory=6Gi",
                 # A 2-CPU node: the generator runs beside the pipeline, two training pods
                 # side by side.
                 "--set", "operator.generatorCpu=500m", "--set", "operator.generatorMemory=2Gi",
                 "--set", "operator.trainerCpu=500m", "--set", "operator.trainerMemory=2Gi",
                 "--wait", "--timeout", "5m", timeout=400)
    yield RELEASE_NAMESPACE
    cluster.helm("uninstall", "spa-run", "--namespace", RELEASE_NAMESPACE, "--wait",
                 timeout=300)


@dataclass
class Run:
    """What the faulted run left to check."""

    namespace: str
    volume: Path
    status: dict[str, Any] = field(default_factory=dict)
    #: uid of each child, as the first operator had created them when its pod was deleted.
    before_operator_restart: dict[str, str] = field(default_factory=dict)
    operator_pods: tuple[str, str] = ("", "")
    killed_training_pod: str = ""
    checkpoint_at_kill: str = ""
    pipeline_job_deleted: bool = False
    #: the model cache claim's folder on the node.
    cache: Path | None = None
    #: the generator's pod, as the API server had it while the pipeline ran.
    generator_pod: dict[str, Any] = field(default_factory=dict)
    #: the pod of the generator serving the trained checkpoint, during the evaluation.
    trained_generator_pod: dict[str, Any] = field(default_factory=dict)


def _children(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = json.loads(cluster.kubectl("-n", namespace, "get", "deploy,job,svc,configmap",
                                       "-l", RUN_SELECTOR, "-o", "json"))["items"]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in items}


def _pods(cluster: Cluster, namespace: str, component: str) -> list[dict[str, Any]]:
    """The run's pods of one workload (generator, pipeline, training, evaluation)."""
    return json.loads(cluster.kubectl(
        "-n", namespace, "get", "pods", "-l",
        f"{RUN_SELECTOR},app.kubernetes.io/component={component}", "-o", "json"))["items"]


def _operator_pod(cluster: Cluster) -> str:
    """The running, ready operator pod ('' while there is none)."""
    pods = json.loads(cluster.kubectl("-n", RELEASE_NAMESPACE, "get", "pods", "-l",
                                      OPERATOR_SELECTOR, "-o", "json"))["items"]
    for pod in pods:
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in pod["status"].get("conditions", []))
        if ready and not pod["metadata"].get("deletionTimestamp"):
            return str(pod["metadata"]["name"])
    return ""


def _restart_operator(cluster: Cluster, run: Run) -> None:
    """Delete the operator's pod while the pipeline runs; wait for its replacement."""
    old = _operator_pod(cluster)
    run.before_operator_restart = {k: o["metadata"]["uid"]
                                   for k, o in _children(cluster, run.namespace).items()}
    cluster.kubectl("-n", RELEASE_NAMESPACE, "delete", "pod", old, "--wait=true", timeout=180)
    new = wait_for("a new operator pod", lambda: _operator_pod(cluster), 300,
                   lambda: cluster.describe(RELEASE_NAMESPACE))
    run.operator_pods = (old, new)


def _complete_checkpoint(run: Run) -> str:
    """The last `checkpoint-N` the trainer has finished writing (trainer_state.json is last)."""
    train = run.volume / "runs" / NAME / "iter-00" / "train"
    done = [p.parent.name for p in train.glob("checkpoint-*/trainer_state.json")]
    return max(done, key=lambda n: int(n.split("-")[1]), default="")


def _kill_training_pod(cluster: Cluster, run: Run, checkpoint: str) -> None:
    """Delete the second node's pod of the first training attempt, as a lost node would."""
    pods = json.loads(cluster.kubectl(
        "-n", run.namespace, "get", "pods", "-l", f"job-name={NAME}-train-0",
        "-o", "json"))["items"]
    (rank1,) = [p["metadata"]["name"] for p in pods
                if p["metadata"]["annotations"].get(
                    "batch.kubernetes.io/job-completion-index") == "1"]
    cluster.kubectl("-n", run.namespace, "delete", "pod", rank1, "--grace-period=5",
                    "--wait=false")
    run.killed_training_pod, run.checkpoint_at_kill = rank1, checkpoint


@pytest.fixture(scope="module")
def run(cluster: Cluster, operator: str) -> Iterator[Run]:
    namespace = f"t-run-{int(time.time())}"
    cluster.kubectl("create", "namespace", namespace)
    faulted = Run(namespace, cluster.run_volume(namespace),
                  cache=cluster.run_volume(namespace, "model-cache"))
    doc = copy.deepcopy(DOC)
    for section, values in TUNED.items():
        doc["spec"][section] = {**doc["spec"].get(section, {}), **values}
    cluster.apply(yaml.safe_dump(doc), namespace)

    def progress() -> dict[str, Any] | None:
        """Deal each fault once its moment comes; the run's status once it has finished."""
        status = (cluster.get("spar", NAME, namespace) or {}).get("status", {})
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        if not faulted.generator_pod and status.get("stage") == "Pipeline":
            faulted.generator_pod = next(iter(_pods(cluster, namespace, "generator")), {})
        if not faulted.trained_generator_pod and status.get("finishedStages") == [
                "Pipeline", "Training"]:
            faulted.trained_generator_pod = next(
                (p for p in _pods(cluster, namespace, "generator")
                 if p["metadata"]["labels"]["alignment.spa.dev/iteration"] == "1"), {})
        if not faulted.operator_pods[0] and status.get("stage") == "Pipeline" and \
                f"Job/{NAME}-pipeline-0" in _children(cluster, namespace):
            _restart_operator(cluster, faulted)
        elif not faulted.killed_training_pod and status.get("stage") == "Training" and \
                (checkpoint := _complete_checkpoint(faulted)):
            _kill_training_pod(cluster, faulted, checkpoint)
        elif faulted.killed_training_pod and not faulted.pipeline_job_deleted and \
                status.get("trainingRestarts") == 1 and status.get("counts"):
            # The finished pipeline's Job goes (a user's cleanup, a TTL of their own): the
            # status remembers the stage, so neither it nor the generator comes back.
            cluster.kubectl("-n", namespace, "delete", "job", f"{NAME}-pipeline-0",
                            "--cascade=background", "--wait=false")
            faulted.pipeline_job_deleted = True
        return None

    faulted.status = wait_for("the run to finish", progress, 3000,
                              lambda: cluster.describe(namespace), interval=1)
    yield faulted
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def _events(cluster: Cluster, namespace: str, reason: str) -> list[str]:
    """Messages of the run's events with `reason`, oldest first, once per occurrence."""
    items = json.loads(cluster.kubectl("-n", namespace, "get", "events", "--field-selector",
                                       f"involvedObject.name={NAME},reason={reason}",
                                       "-o", "json"))["items"]
    items.sort(key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or "")
    return [e["message"] for e in items for _ in range(e.get("count") or 1)]


def test_the_cluster_cpu_example_runs_to_succeeded(cluster: Cluster, run: Run) -> None:
    status = run.status
    assert status["phase"] == "Succeeded", json.dumps(status, indent=2) + cluster.describe(
        run.namespace)

    # Counts in status come from the stages' termination messages, written in the pods.
    counts = status["counts"]
    assert counts["prompts"] == SPEC["prompts"]["count"]
    assert counts["samples"] == SPEC["prompts"]["count"] * SPEC["sampling"]["numSamples"]
    assert counts["pairs"] > 0
    run_dir = run.volume / "runs" / NAME
    assert (run_dir / "iter-00" / "pairs" / "pairs.parquet").is_file()
    assert (run_dir / "iter-00" / "train" / "checkpoint-final" / "config.json").is_file()
    assert (run_dir / "report" / "report.html").is_file()
    # The volume was handed out root-owned: the kubelet gave it the pods' fsGroup, so the
    # non-root stages could make the run's directory.
    assert (run.volume.stat().st_uid, run.volume.stat().st_gid) == (0, 65532)
    assert run_dir.stat().st_uid == 65532

    table = cluster.kubectl("-n", run.namespace, "get", "spar", NAME)
    assert "Succeeded" in table and str(counts["pairs"]) in table


def test_a_deleted_operator_pod_is_replaced_and_creates_no_child_twice(
        cluster: Cluster, run: Run) -> None:
    old, new = run.operator_pods
    assert old and new and old != new, "the operator's pod was never deleted"
    # Children that the first operator had made and that the run still has are the same
    # objects: the new operator found them instead of making them again.
    after = {k: o["metadata"]["uid"] for k, o in _children(cluster, run.namespace).items()}
    for key, uid in run.before_operator_restart.items():
        assert after.get(key, uid) == uid, f"{key} was created again"
    assert f"Job/{NAME}-pipeline-0" in run.before_operator_restart
    created = _events(cluster, run.namespace, "Created")
    assert created, "no Created event recorded"
    # Nothing twice, but the starting policy's generator: for the pipeline, then to judge.
    twice = {m for m in created if created.count(m) > 1}
    assert twice == {f"created Deployment {NAME}-generator-0"}, sorted(created)
    assert created.count(f"created Deployment {NAME}-generator-0") == 2, sorted(created)


def test_a_killed_training_pod_restarts_training_from_its_last_checkpoint(
        cluster: Cluster, run: Run) -> None:
    assert run.killed_training_pod, "training finished before a checkpoint could be seen"
    assert run.status["trainingRestarts"] == 1, run.status
    restarted = _events(cluster, run.namespace, "TrainingRestarted")
    assert len(restarted) == 1 and f"{NAME}-train-0-r1" in restarted[0], restarted
    # The failed attempt stays for its logs; the new attempt finished.
    children = _children(cluster, run.namespace)
    conditions = {key: {c["type"] for c in o["status"].get("conditions", [])
                        if c["status"] == "True"}
                  for key, o in children.items() if key.startswith(f"Job/{NAME}-train-0")}
    assert "Failed" in conditions[f"Job/{NAME}-train-0"]
    assert "Complete" in conditions[f"Job/{NAME}-train-0-r1"]

    # Training resumed from a checkpoint on the run's volume, not from step 0, and ran to
    # the end; the pipeline, already finished, ran once.
    train = json.loads((run.volume / "runs" / NAME / "iter-00" / "train" /
                        MANIFEST).read_text())["stats"]
    killed_at = int(run.checkpoint_at_kill.split("-")[1])
    assert train["resumed_from_step"] >= killed_at > 0, (train, run.checkpoint_at_kill)
    assert train["steps"] == SPEC["training"]["maxSteps"]
    created = _events(cluster, run.namespace, "Created")
    assert created.count(f"created Job {NAME}-pipeline-0") == 1, created


def test_a_finished_stage_whose_job_was_deleted_is_not_run_again(
        cluster: Cluster, run: Run) -> None:
    assert run.pipeline_job_deleted, "the run finished before its pipeline Job was deleted"
    assert run.status["finishedStages"] == ["Pipeline", "Training", "TrainedAnswers",
                                            "Evaluation"]
    children = _children(cluster, run.namespace)
    assert f"Job/{NAME}-pipeline-0" not in children
    assert not [k for k in children if k.startswith(f"Deployment/{NAME}-generator")], children
    # The pipeline's generator did not come back during training: once for the pipeline,
    # once for the evaluation's judge, in that order, the trained checkpoint's between them.
    created = [m for m in _events(cluster, run.namespace, "Created")
               if f"Deployment {NAME}-generator" in m]
    assert created == [f"created Deployment {NAME}-generator-{i}" for i in (0, 1, 0)], created


def test_the_evaluation_asks_vllm_serving_the_trained_checkpoint_then_the_policy(
        cluster: Cluster, run: Run) -> None:
    pod = run.trained_generator_pod
    assert pod, "the trained checkpoint's generator pod was never seen"
    args = _container(pod, "vllm")["args"]
    assert args[args.index("--model") + 1] == \
        f"/spa/storage/runs/{NAME}/iter-00/train/checkpoint-final"
    evaluate = run.volume / "runs" / NAME / "iter-00" / "evaluate"
    manifest = json.loads((evaluate / MANIFEST).read_text())
    assert manifest["complete"] and {"answers-after", "answers-before"} <= manifest["shards"].keys()
    count = SPEC["evaluation"]["count"]
    assert manifest["stats"]["prompts"] == count
    import pyarrow.parquet as pq

    table = pq.read_table(evaluate / "responses.parquet")
    assert table.column("after_response").to_pylist() == pq.read_table(
        evaluate / "answers-after.parquet").column("response").to_pylist()
    assert sum(bool(a) for a in table.column("after_response").to_pylist()) == count
    # Both evaluation Jobs ran as clients in the slim worker image, without GPUs or weights.
    jobs = {p["metadata"]["labels"]["job-name"]: p
            for p in _pods(cluster, run.namespace, "evaluation")}
    assert {f"{NAME}-answers-0", f"{NAME}-eval-0"} <= jobs.keys()
    for job, container in ((f"{NAME}-answers-0", "answers"), (f"{NAME}-eval-0", "evaluate")):
        c = _container(jobs[job], container)
        assert c["image"] == cluster.images["worker"], job
        assert "model-cache" not in {m["name"] for m in c["volumeMounts"]}, job
    assert run.status["evaluation"]["beforePrimary"] is not None


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    (c,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return c


def test_pods_carry_the_model_cache_requests_and_the_runs_overrides(
        cluster: Cluster, run: Run) -> None:
    generator = run.generator_pod
    assert generator, "the generator's pod was never seen"
    loaders = [(generator, "vllm"), (run.trained_generator_pod, "vllm")]
    loaders += [(p, "trainer") for p in _pods(cluster, run.namespace, "training")]
    assert len(loaders) >= 2 + 2, [p["metadata"]["name"] for p, _ in loaders]
    for pod, name in loaders:
        where = f"{pod['metadata']['name']}/{name}"
        c = _container(pod, name)
        assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}} \
            in pod["spec"]["volumes"], where
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env["HF_HOME"] == "/spa/cache/huggingface", where
        # The chart's requests (set small for this 2-CPU node) reached every loader.
        assert c["resources"]["requests"] == {"cpu": "500m", "memory": "2Gi"}, where
        assert pod["metadata"]["annotations"]["example.com/team"] == "alignment", where
    # The kubelet mounted the cache claim into the non-root pods: it gave it their group.
    assert run.cache is not None and run.cache.stat().st_gid == 65532
    # A saturated vLLM server is not restarted by a probe's 1 s default timeout.
    vllm = _container(generator, "vllm")
    assert vllm["livenessProbe"]["timeoutSeconds"] >= 10
    assert vllm["readinessProbe"]["timeoutSeconds"] >= 10
    # The training override: merged into the operator's trainer, which still ran its stage.
    for pod in _pods(cluster, run.namespace, "training"):
        trainer = _container(pod, "trainer")
        env = {e["name"]: e.get("value") for e in trainer["env"]}
        assert env["NCCL_DEBUG"] == "WARN" and "PET_NNODES" in env
        assert {"name": "scratch", "mountPath": "/scratch"} in trainer["volumeMounts"]
        assert trainer["command"][0] == "spa-torchrun" and trainer["args"][:2] == ["spa", "train"]
    # Pods of other workloads did not get the training override.
    for pod in _pods(cluster, run.namespace, "evaluation"):
        assert "scratch" not in {v["name"] for v in pod["spec"]["volumes"]}


def test_deleting_the_run_removes_every_child(cluster: Cluster, run: Run) -> None:
    cluster.kubectl("-n", run.namespace, "delete", "spar", NAME, "--wait=true", timeout=300)
    wait_for("the run's children to be removed",
             lambda: not _children(cluster, run.namespace), 180)
