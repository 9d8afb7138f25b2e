"""The one-node cluster runs real pods: scheduler, kubelet, containerd + runc, the CNI bridge,
kube-proxy, CoreDNS and the controller manager's Deployment, Job and TTL controllers.

These are what the operator's children rely on and what the kubelet-playing operator tests
cannot see: a Service reached by its DNS name through kube-proxy's rules, a termination
message written by a container, an Indexed Job's pods finding each other by their hostnames
under a headless Service (torchrun's rendezvous), and a finished Job removed by its TTL.
"""

from __future__ import annotations

import pytest

from cluster_env import Cluster, job_finished, termination_messages
from waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def test_job_reaches_a_deployment_through_its_service_name(cluster: Cluster,
                                                          namespace: str) -> None:
    token = f"served-from-{namespace}"
    cluster.apply(f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {cluster.images["debian"]}
        imagePullPolicy: Never
        command: [bash, -c, "mkdir -p /srv && echo -n {token} > /srv/token && exec python3 -m http.server 8080 -d /srv"]
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe: {{httpGet: {{path: /token, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: client}}
spec:
  backoffLimit: 0
  template:
    metadata: {{labels: {{app: client}}}}
    spec:
      restartPolicy: Never
      containers:
      - name: client
        image: {cluster.images["debian"]}
        imagePullPolicy: Never
        command:
        - python3
        - -c
        - |
          import socket, time, urllib.request
          for attempt in range(120):
              try:
                  body = urllib.request.urlopen("http://web/token", timeout=5).read().decode()
                  break
              except OSError:
                  time.sleep(1)
          addr = socket.gethostbyname("web.{namespace}.svc.cluster.local")
          open("/dev/termination-log", "w").write(body + " via " + addr)
""", namespace)
    status = wait_for("the client Job", lambda: job_finished(cluster, "client", namespace), 300,
                      lambda: cluster.describe(namespace))
    assert status == "Complete", cluster.describe(namespace)
    (message,) = termination_messages(cluster, namespace, "app=client").values()
    body, _, address = message.partition(" via ")
    assert body == token
    service = cluster.get("service", "web", namespace)
    assert service is not None and address == service["spec"]["clusterIP"]
    deployment = cluster.get("deployment", "web", namespace)
    assert deployment is not None and deployment["status"].get("availableReplicas") == 1


def test_indexed_job_pods_rendezvous_by_hostname(cluster: Cluster, namespace: str) -> None:
    """As the training Job: pod 0 listens, pod 1 finds it as `<job>-0.<service>` and connects."""
    cluster.apply(f"""
apiVersion: v1
kind: Service
metadata: {{name: ranks}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app: ranks}}
  ports: [{{port: 29500, name: rendezvous}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: train}}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  backoffLimit: 0
  template:
    metadata: {{labels: {{app: ranks}}}}
    spec:
      subdomain: ranks
      restartPolicy: Never
      containers:
      - name: rank
        image: {cluster.images["debian"]}
        imagePullPolicy: Never
        env:
        - name: RANK
          valueFrom: {{fieldRef: {{fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}}
        command:
        - python3
        - -c
        - |
          import os, socket, time
          rank = int(os.environ["RANK"])
          if rank == 0:
              server = socket.create_server(("0.0.0.0", 29500))
              server.settimeout(240)
              conn, _ = server.accept()
              message = conn.recv(100).decode()
          else:
              for attempt in range(240):
                  try:
                      conn = socket.create_connection(("train-0.ranks", 29500), timeout=5)
                      break
                  except OSError:
                      time.sleep(1)
              conn.sendall(("hello from " + socket.gethostname()).encode())
              message = "sent"
          open("/dev/termination-log", "w").write(message)
""", namespace)
    status = wait_for("the Indexed Job", lambda: job_finished(cluster, "train", namespace), 300,
                      lambda: cluster.describe(namespace))
    assert status == "Complete", cluster.describe(namespace)
    messages = sorted(termination_messages(cluster, namespace, "app=ranks").values())
    assert messages == ["hello from train-1", "sent"]


def test_finished_job_is_removed_by_its_ttl(cluster: Cluster, namespace: str) -> None:
    cluster.apply(f"""
apiVersion: batch/v1
kind: Job
metadata: {{name: short}}
spec:
  ttlSecondsAfterFinished: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {{name: done, image: {cluster.images["debian"]}, imagePullPolicy: Never, command: ["true"]}}
""", namespace)
    wait_for("the Job to appear", lambda: cluster.get("job", "short", namespace) is not None, 30)
    wait_for("the TTL controller to delete the finished Job",
             lambda: cluster.get("job", "short", namespace) is None, 180,
             lambda: cluster.describe(namespace))
