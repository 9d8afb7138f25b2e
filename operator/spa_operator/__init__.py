"""The SPA Kubernetes operator: SPAAlignmentRun and SPAAlignmentSchedule custom resources.

The package is `spa_operator` (not `operator`, a stdlib module). It imports only spa_core's
light modules (the spec models, the run directory's layout `spa_core.layout`, the termination
message's names and the distributed-training files' content), so the operator image needs no
torch, transformers, TRL or vLLM.
"""

__all__: list[str] = []
