"""SPAAlignmentSchedule with the real operator and API server: a firing creates an owned run,
the next firing starts from the model the last successful run trained."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from operator_harness import GROUP, RUNS, SCHEDULES, VERSION, Kubelet, wait_for

pytestmark = pytest.mark.kube

TEMPLATE: dict[str, Any] = {
    "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
    "prompts": {"builtin": "harmlessness"},
    "generator": {"backend": "openai", "gpus": 1},
    "training": {"gpusPerNode": 8},
    "storage": {"pvc": "spa-runs"},
    "scheduling": {"queueName": "gpu"},
}


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_schedule_fires_runs_that_chain_their_models(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    custom = kubelet.custom
    schedule = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, SCHEDULES, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentSchedule",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid",
                 "runTemplate": TEMPLATE}})

    def schedule_status() -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, SCHEDULES,
                                                  "nightly")
        return obj.get("status") or {}

    def runs() -> list[dict[str, Any]]:
        return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, RUNS)["items"]

    wait_for("the schedule's first status", lambda: schedule_status().get("conditions"))
    # As if the schedule had last fired ten minutes ago: the current minute's firing is due.
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, SCHEDULES, "nightly", {
        "status": {"lastScheduleTime": _stamp(datetime.now(UTC) - timedelta(minutes=10))}})

    (first,) = wait_for("a run", runs)
    meta = first["metadata"]
    (ref,) = meta["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == \
        ("SPAAlignmentSchedule", "nightly", schedule["metadata"]["uid"])
    assert meta["labels"]["alignment.spa.dev/schedule"] == "nightly"
    assert first["spec"]["model"]["name"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert first["spec"]["scheduling"] == {"queueName": "gpu"}
    wait_for("the run listed as active",
             lambda: schedule_status().get("active") == [meta["name"]])

    # The run goes through its stages (the test plays the kubelet) and succeeds.
    name = meta["name"]
    kubelet.make_available(f"{name}-generator-0")
    kubelet.complete(f"{name}-pipeline-0")
    kubelet.complete(f"{name}-train-0")
    kubelet.evaluate(name)
    model = f"/spa/storage/runs/{name}/iter-00/train/checkpoint-final"
    assert kubelet.wait_status(name, "Succeeded", lambda s: s.get("phase") == "Succeeded")[
        "artifacts"]["model"] == model
    status = wait_for("the success recorded",
                      lambda: (s := schedule_status()).get("lastModel") == model and s)
    assert status["lastSuccessfulRun"] == meta["name"]
    assert meta["name"] not in status["active"]  # (the next minute's run may be there)

    # The next minute's firing (held back while the first run was active: Forbid) starts
    # from that model.
    deadline = time.monotonic() + 75
    second = wait_for("a second run", lambda: [r for r in runs()
                                               if r["metadata"]["name"] != meta["name"]],
                      timeout=max(deadline - time.monotonic(), 1))
    assert second[0]["spec"]["model"] == {"name": model}
    # (kopf posts events in the background: the run can be listed before its event.)
    def chained_event() -> bool:
        created = [e.message for e in kubelet.events("nightly") if e.reason == "Created"]
        return any(f"from {model}" in m for m in created)

    wait_for("the second run's Created event, naming the model it starts from", chained_event)


def test_a_schedule_that_can_never_fire_says_why(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    custom = kubelet.custom
    # Five fields, as the CRD's pattern asks, but minute 61 does not exist.
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, SCHEDULES, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentSchedule",
        "metadata": {"name": "never"},
        "spec": {"schedule": "61 * * * *", "runTemplate": TEMPLATE}})

    def ready() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, SCHEDULES, "never")
        return next((c for c in (obj.get("status") or {}).get("conditions") or []
                     if c["type"] == "Ready"), None)

    cond = wait_for("Ready condition", ready)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "spec.schedule" in cond["message"] and "61 * * * *" in cond["message"]
    assert wait_for("a Warning event", lambda: [e for e in kubelet.events("never")
                                                if e.type == "Warning"])
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, RUNS)["items"] == []
