"""The few API calls the reconciler makes: list children, create-if-absent, delete."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from spa_core.spec import API_GROUP
from spa_operator import crd
from spa_operator.builders.common import RUN_LABEL
from spa_operator.plan import Children

__all__ = ["Cluster", "Rejected"]

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


class Rejected(ValueError):
    """The API server refused an object as invalid (422); the message is its own."""


def _rejection(exc: ApiException) -> str | None:
    """The API server's message when `exc` says the object is invalid, else None."""
    if exc.status not in (400, 422):
        return None
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(exc.body or exc.reason)


class Cluster:
    """Typed clients of one API server, speaking in plain dicts."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def _dict(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def children(self, namespace: str, run: str) -> Children:
        selector = f"{RUN_LABEL}={run}"
        deployments = self.apps.list_namespaced_deployment(namespace, label_selector=selector)
        jobs = self.batch.list_namespaced_job(namespace, label_selector=selector)
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector)
        return Children(
            deployments={d.metadata.name: self._dict(d) for d in deployments.items},
            jobs={j.metadata.name: self._dict(j) for j in jobs.items},
            pods={p.metadata.name: self._dict(p) for p in pods.items},
        )

    def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PersistentVolumeClaim `name`, or None when there is none."""
        try:
            return self._dict(self.core.read_namespaced_persistent_volume_claim(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={job}")
        return [self._dict(p) for p in pods.items]

    def _create(self, obj: dict[str, Any], **options: Any) -> None:
        create = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Deployment": self.apps.create_namespaced_deployment,
            "Job": self.batch.create_namespaced_job,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }[obj["kind"]]
        try:
            create(obj["metadata"]["namespace"], obj, **options)
        except ApiException as exc:
            if (message := _rejection(exc)) is not None:
                raise Rejected(message) from None
            raise

    def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create `obj`; False when it already exists (children are never updated in place).
        Raises Rejected when the API server finds it invalid."""
        try:
            self._create(obj)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def validate(self, obj: dict[str, Any]) -> None:
        """Have the API server admit `obj` without storing it (a dry-run create: defaulting,
        validation, admission webhooks); raises Rejected with its message."""
        try:
            self._create(obj, dry_run="All")
        except ApiException as exc:
            if exc.status != 409:  # a dry run of what exists already passed once
                raise
        except Rejected as exc:
            # A webhook with side effects refuses every dry run: that says nothing of `obj`,
            # which the real create will have checked.
            if "does not support dry run" not in str(exc):
                raise

    def _delete_run(self, name: str, namespace: str, **options: Any) -> None:
        self.custom.delete_namespaced_custom_object(API_GROUP, crd.VERSION, namespace,
                                                    crd.RUN_PLURAL, name, **options)

    def delete(self, namespace: str, kind: str, name: str) -> bool:
        """Delete a child (or a run) and, in the background, what it owns; False when already
        gone."""
        delete = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Job": self.batch.delete_namespaced_job,
            "Service": self.core.delete_namespaced_service,
            crd.RUN_KIND: self._delete_run,
        }[kind]
        try:
            delete(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True
