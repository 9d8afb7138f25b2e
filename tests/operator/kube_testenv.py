"""A real kube-apiserver + etcd on loopback for tests (scripts/kube-testenv.sh), and helpers.

The control plane is either one the caller started (KUBECONFIG given in SPA_TEST_KUBECONFIG,
e.g. by .ci/run) or one this module starts in a temporary directory and stops afterwards.
There is no scheduler, controller-manager or kubelet: tests play them by writing status.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kube-testenv.sh"
CRD_DIR = REPO / "operator" / "crds"
#: A kubeconfig of an already running test control plane (skip starting one).
KUBECONFIG_ENV = "SPA_TEST_KUBECONFIG"
#: Set to 1 (as CI does) to fail, not skip, when the binaries are missing.
REQUIRE_ENV = "SPA_REQUIRE_KUBE"


class KubeUnavailable(RuntimeError):
    """No test control plane: binaries not built (run `scripts/kube-testenv.sh build`)."""


def binaries_dir() -> Path:
    out = subprocess.run([str(SCRIPT), "bin"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


@dataclass
class KubeTestEnv:
    """A running control plane: its kubeconfig, and how to stop it if we started it."""

    kubeconfig: Path
    state_dir: Path | None = None

    @classmethod
    def start(cls, state_dir: Path) -> KubeTestEnv:
        if given := os.environ.get(KUBECONFIG_ENV):
            return cls(kubeconfig=Path(given))
        bins = binaries_dir()
        # The controller manager runs the garbage collector (deleting a run removes its
        # children); kubectl checks what users see (`kubectl get spar`).
        missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
                   if not (bins / b).is_file()]
        if missing:
            raise KubeUnavailable(f"{', '.join(missing)} not built in {bins}: run "
                                  f"`scripts/kube-testenv.sh build` (about an hour on 2 cores)")
        out = subprocess.run([str(SCRIPT), "start", str(state_dir)], capture_output=True,
                             text=True, timeout=300)
        if out.returncode != 0:
            subprocess.run([str(SCRIPT), "stop", str(state_dir)], capture_output=True)
            raise RuntimeError(f"kube-testenv start failed:\n{out.stderr[-4000:]}")
        return cls(kubeconfig=Path(out.stdout.strip().splitlines()[-1]), state_dir=state_dir)

    def stop(self) -> None:
        if self.state_dir is not None:
            subprocess.run([str(SCRIPT), "stop", str(self.state_dir)], capture_output=True,
                           timeout=60)

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def apply_crds(api_client: Any, directory: Path = CRD_DIR, timeout: float = 60.0) -> list[str]:
    """Create or replace every CRD in `directory` and wait until each is Established."""
    import yaml
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    created = []
    for path in sorted(directory.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, body)
        created.append(name)
    deadline = time.monotonic() + timeout
    for name in created:
        while True:
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout}s: {conditions}")
            time.sleep(0.2)
    return created
