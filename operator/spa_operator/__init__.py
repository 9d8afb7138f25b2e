"""The SPA Kubernetes operator: SPAAlignmentRun and SPAAlignmentSchedule custom resources.

The package is `spa_operator` (not `operator`, a stdlib module). It imports only spa_core's
spec models, so the operator image needs no torch, transformers, TRL or vLLM.
"""

__all__: list[str] = []
