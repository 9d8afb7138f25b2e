"""A run's `podTemplate` overrides, merged over the pod templates the operator builds.

The merge is Kubernetes' strategic merge patch, restricted to what a pod template holds: maps
merge key by key, `null` removes a key, the lists the API declares with a patch merge key
(`x-kubernetes-patch-merge-key` in its OpenAPI) merge item by item on that key, and every
other list or value replaces the operator's. Volumes are merged with `retainKeys`: an override
of a volume replaces its source (`emptyDir` -> `persistentVolumeClaim`) rather than adding a
second one. The API server validates the merged pod when the run is admitted (a dry-run
create of every workload), so what this module does not check, the API server does.
"""

from __future__ import annotations

import copy
from typing import Any

from spa_core.spec import PodTemplateOverride, RunSpec
from spa_operator.errors import ClusterSpecError

__all__ = ["OWNED_POD_FIELDS", "WORKLOADS", "apply_pod_templates", "strategic_merge"]

#: The workloads a run's `scheduling.<workload>.podTemplate` can override.
WORKLOADS = ("generator", "pipeline", "training", "evaluation")
#: Pod fields the operator owns: Jobs need their restart policy, training pods their DNS name.
OWNED_POD_FIELDS = ("restartPolicy", "subdomain", "hostname")
#: Fields of the operator's own containers that an override cannot set: what a stage runs.
OWNED_CONTAINER_FIELDS = ("command", "args")

#: Merge keys of the PodSpec's lists (k8s.io/api core/v1, its OpenAPI's patch merge keys),
#: by path from the pod spec ("*" = any item of the list before it).
_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("containers",): "name",
    ("initContainers",): "name",
    ("ephemeralContainers",): "name",
    ("volumes",): "name",
    ("imagePullSecrets",): "name",
    ("hostAliases",): "ip",
    ("resourceClaims",): "name",
    ("schedulingGates",): "name",
    ("topologySpreadConstraints",): "topologyKey",
    **{(c, "*", field): key
       for c in ("containers", "initContainers", "ephemeralContainers")
       for field, key in (("env", "name"), ("ports", "containerPort"),
                          ("volumeMounts", "mountPath"), ("volumeDevices", "devicePath"))},
}
#: Lists whose merged items keep only the keys the override gives (patch strategy retainKeys).
_RETAIN_KEYS = {("volumes",)}


def _merge_list(base: list[Any], patch: list[Any], path: tuple[str, ...], key: str,
                where: str) -> list[Any]:
    out = [copy.deepcopy(item) for item in base]
    index = {item.get(key): i for i, item in enumerate(out) if isinstance(item, dict)}
    for n, item in enumerate(patch):
        if not isinstance(item, dict) or key not in item:
            raise ClusterSpecError(f"{where}[{n}]", f"each item needs its {key!r} (the key "
                                   "it is merged on)")
        if (i := index.get(item[key])) is None:
            # Indexed too: a later item with the same key in this patch merges into it, as
            # the API server's strategic merge does, instead of making a duplicate.
            index[item[key]] = len(out)
            out.append(copy.deepcopy(item))
            continue
        old = out[i]
        if path in _RETAIN_KEYS:
            old = {k: v for k, v in old.items() if k in item}
        out[i] = _merge_map(old, item, (*path, "*"), f"{where}[{key}={item[key]}]")
    return out


def _merge_map(base: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...],
               where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for name, value in patch.items():
        field = f"{where}.{name}"
        if name.startswith("$"):
            raise ClusterSpecError(field, "strategic merge directives ($patch, $retainKeys, "
                                   "...) are not supported: give the values the pod should have")
        if value is None:
            out.pop(name, None)
        elif isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = _merge_map(out[name], value, (*path, name), field)
        elif isinstance(value, list) and (key := _MERGE_KEYS.get((*path, name))) is not None:
            out[name] = _merge_list(out.get(name) or [], value, (*path, name), key, field)
        else:
            out[name] = copy.deepcopy(value)
    return out


def strategic_merge(pod_spec: dict[str, Any], patch: dict[str, Any],
                    where: str = "podTemplate.spec") -> dict[str, Any]:
    """`patch` merged over `pod_spec` (neither is changed); errors name `where`."""
    return _merge_map(pod_spec, patch, (), where)


def _check_owned(template: dict[str, Any], override: PodTemplateOverride, where: str) -> None:
    """Reject what would change how the operator runs or finds its pods."""
    ours = template["metadata"].get("labels") or {}
    for label in override.metadata.labels:
        if label in ours or label.startswith("alignment.spa.dev/"):
            raise ClusterSpecError(f"{where}.metadata.labels.{label}",
                                   "set by the operator, which selects its pods by it")
    for name in OWNED_POD_FIELDS:
        if name in override.spec:
            raise ClusterSpecError(f"{where}.spec.{name}", "set by the operator")
    pod = template["spec"]
    for group in ("initContainers", "containers"):
        own = {c["name"] for c in pod.get(group) or []}
        for item in override.spec.get(group) or []:
            if not isinstance(item, dict) or item.get("name") not in own:
                continue  # a container of the user's own (a sidecar): theirs to define
            for name in OWNED_CONTAINER_FIELDS:
                if name in item:
                    raise ClusterSpecError(
                        f"{where}.spec.{group}[name={item['name']}].{name}",
                        f"the operator's container {item['name']!r} runs its stage; set "
                        "env, resources, volumeMounts or securityContext instead")


def apply_pod_templates(template: dict[str, Any], spec: RunSpec, workload: str) -> dict[str, Any]:
    """The pod template (`{"metadata": ..., "spec": ...}`) of `workload` with the run-wide
    `scheduling.podTemplate`, then the workload's own, merged over it."""
    sched = spec.scheduling
    overrides = [("scheduling.podTemplate", sched.pod_template),
                 (f"scheduling.{workload}.podTemplate", getattr(sched, workload).pod_template)]
    for where, override in overrides:
        if override is None:
            continue
        _check_owned(template, override, where)
        metadata = dict(template["metadata"])
        for part in ("labels", "annotations"):
            if extra := getattr(override.metadata, part):
                metadata[part] = {**extra, **(metadata.get(part) or {})}
        template = {"metadata": metadata,
                    "spec": strategic_merge(template["spec"], override.spec, f"{where}.spec")}
    return template
