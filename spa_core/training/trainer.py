"""Preference training on the pairs Parquet: SPA (weighted SimPO) and the paper's ablations.

* `spa`: TRL's CPOTrainer (SimPO mode) with each pair's uncertainty weight carried from the
  Parquet through tokenisation and the collator into `spa_simpo_loss`.
* `simpo`: the same trainer with the weights ignored; identical to TRL's CPO SimPO loss.
* `dpo`: TRL's DPOTrainer, the reference model a frozen copy of the initial policy.
* `sft`: TRL's SFTTrainer on prompt + chosen (completion-only loss).

`train` is the one entry point: it resumes from the last complete `checkpoint-N` of its
output directory and publishes `checkpoint-final` atomically (temp dir + rename), so a run
whose final checkpoint exists returns at once. With a `store` (an object store's URI) the
checkpoints are kept there as well, and a restarted run resumes from the store's
(`spa_core.training.checkpoints`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
from trl.import_utils import TRLExperimentalWarning

from spa_core.layout import DISTRIBUTED_CONFIG_ENV
from spa_core.spec import TrainingSpec, TrainingSpeedSpec
from spa_core.training.checkpoints import (
    FINAL_CHECKPOINT,
    RESULT_FILE,
    CheckpointStore,
    checkpoint_step,
    last_checkpoint,
)
from spa_core.training.data import PairsError, load_pairs, preference_dataset, sft_dataset
from spa_core.training.distributed import training_arguments
from spa_core.training.fast import (
    completion_logps,
    fast_logps_unsupported,
    register_varlen_attention,
)
from spa_core.training.loss import spa_simpo_loss

# CPOTrainer lives in trl.experimental, whose import warns that its API may change; the
# project pins trl==1.16.* for exactly that reason, so the notice carries no information.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=TRLExperimentalWarning)
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.utils import DPODataCollatorWithPadding

__all__ = [
    "FINAL_CHECKPOINT",
    "RESULT_FILE",
    "SPATrainer",
    "TrainResult",
    "WeightedPreferenceCollator",
    "last_checkpoint",
    "simpo_trainer",
    "train",
]

log = logging.getLogger(__name__)

_PARTIAL = ".checkpoint-final.partial"
#: `checkpoint-N` kept (in the output directory and on a store).
_SAVE_TOTAL_LIMIT = 2


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run produced."""

    checkpoint_dir: str
    """The loadable Hugging Face checkpoint (model + tokenizer, safetensors)."""
    steps: int
    """Optimizer steps taken in total (across resumes)."""
    final_loss: float | None
    """The last logged training loss."""
    log_history: list[dict[str, Any]] = field(default_factory=list)
    """Every logged record (loss, rewards/margins, learning_rate, ... and `step`)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Trainer summary metrics (train_runtime, train_loss, ...) of the last `train` call."""
    resumed_from_step: int = 0
    """The step of the checkpoint the last `train` call resumed from (0: from the start)."""


class _NoTelemetry:
    """TRL trainers ping the Hugging Face Hub on start; training pods often have no egress
    and a job must not phone home, so the ping is skipped."""

    def _send_telemetry(self) -> None:
        return None


@dataclass
class WeightedPreferenceCollator(DPODataCollatorWithPadding):
    """TRL's CPO collator, plus the pairs' `weight` as a float tensor of shape (batch,)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(features)
        if "weight" in features[0]:
            weights = [float(f["weight"]) for f in features]
            batch["weight"] = torch.tensor(weights, dtype=torch.float32)
        return batch


def _has_completions(row: dict[str, Any]) -> bool:
    return any(t != -100 for t in row["chosen_labels"]) and any(
        t != -100 for t in row["rejected_labels"]
    )


class SPATrainer(_NoTelemetry, CPOTrainer):
    """CPOTrainer in SimPO mode whose per-pair losses are weighted by the `weight` column.

    With `use_weights=False` (the `simpo` ablation) the loss is TRL's SimPO loss.
    Completions are cut to `max_completion_length` tokens; pairs left without a completion
    (their prompt alone fills `max_length`) are dropped, as TRL's DPOTrainer does.
    `speed` selects the fast paths of `spa_core.training.fast` (None: TRL's computation).
    """

    def __init__(
        self,
        *,
        model: PreTrainedModel,
        args: CPOConfig,
        train_dataset: Dataset,
        processing_class: PreTrainedTokenizerBase,
        use_weights: bool = True,
        speed: TrainingSpeedSpec | None = None,
        callbacks: list[TrainerCallback] | None = None,
    ) -> None:
        simpo = (args.loss_type, args.cpo_alpha, args.label_smoothing, args.alpha)
        if simpo != ("simpo", 0.0, 0.0, 0.0):
            raise ValueError(
                "SPATrainer needs CPOConfig(loss_type='simpo', cpo_alpha=0, label_smoothing=0, "
                f"alpha=0); got loss_type={args.loss_type!r}, cpo_alpha={args.cpo_alpha}, "
                f"label_smoothing={args.label_smoothing}, alpha={args.alpha}"
            )
        if use_weights and "weight" not in train_dataset.column_names:
            raise ValueError("train_dataset has no `weight` column (needed with use_weights=True)")
        # The collator sees whole rows only when the Trainer keeps columns the model's
        # forward() does not name (`weight` among them).
        if args.remove_unused_columns:
            raise ValueError("SPATrainer needs remove_unused_columns=False to keep `weight`")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        self.use_weights = use_weights
        self.padding_free, self.chunk_tokens = _fast_paths(model, speed)
        super().__init__(
            model=model,
            args=args,
            data_collator=WeightedPreferenceCollator(pad_token_id=processing_class.pad_token_id),
            train_dataset=train_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        total = len(self.train_dataset)
        self.train_dataset = self.train_dataset.filter(_has_completions)
        if len(self.train_dataset) < total:
            log.warning(
                "dropped %d of %d pairs whose prompt alone fills max_length=%d tokens",
                total - len(self.train_dataset), total, self.max_length,
            )
        if len(self.train_dataset) == 0:
            raise PairsError(
                f"every pair's prompt fills max_length={self.max_length} tokens: raise maxLength"
            )

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        """TRL's tokenisation, then completions cut to `max_completion_length` tokens."""
        row = super().tokenize_row(feature, model)
        limit = self.max_completion_length
        if limit is None or self.is_encoder_decoder:
            return row
        for side in ("chosen", "rejected"):
            labels = row[f"{side}_labels"]
            start = next((i for i, t in enumerate(labels) if t != -100), len(labels))
            for key in ("input_ids", "attention_mask", "labels"):
                row[f"{side}_{key}"] = row[f"{side}_{key}"][: start + limit]
        return row

    @property
    def fast(self) -> bool:
        """Whether the log-probs take a fast path rather than TRL's computation."""
        return self.padding_free or self.chunk_tokens is not None

    def policy_logps(
        self, model: Any, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Mean completion-token log-probs of the chosen and the rejected responses, (B,)
        each, and the mean logits of each side when the computation had them."""
        if not self.fast:
            chosen, rejected, chosen_logits, rejected_logits = self.concatenated_forward(
                model, batch
            )[:4]
            logits = {"chosen": chosen_logits.detach().mean(),
                      "rejected": rejected_logits.detach().mean()}
            return chosen, rejected, logits
        chosen, rejected = completion_logps(
            model, batch, padding_free=self.padding_free, chunk_tokens=self.chunk_tokens,
            pad_token_id=self.pad_token_id, unwrapped=self.accelerator.unwrap_model(model),
        )
        return chosen, rejected, {}

    def get_batch_loss_metrics(
        self, model: Any, batch: dict[str, Any], train_eval: str = "train"
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean of the weighted SimPO losses of the batch's pairs, and TRL's metrics."""
        chosen, rejected, logits = self.policy_logps(model, batch)
        weights = batch.get("weight") if self.use_weights else None
        losses = spa_simpo_loss(chosen, rejected, weights, beta=self.beta,
                                gamma=self.simpo_gamma, reduction="none")
        chosen_rewards, rejected_rewards = self.beta * chosen.detach(), self.beta * rejected.detach()
        values = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen.detach(),
            "logps/rejected": rejected.detach(),
            **{f"logits/{side}": value for side, value in logits.items()},
        }
        if weights is not None:
            values["weights/mean"] = weights.detach().to(chosen.device)
        gather = self.accelerator.gather_for_metrics
        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {f"{prefix}{k}": gather(v).mean().item() for k, v in values.items()}
        return losses.mean(), metrics


def _fast_paths(model: PreTrainedModel, speed: TrainingSpeedSpec | None) -> tuple[bool, int | None]:
    """(padding_free, chunk_tokens) the trainer can use on `model` under `speed`."""
    if speed is None:
        return False, None
    if not (speed.padding_free or speed.chunked_logprobs):
        return False, None
    reason = fast_logps_unsupported(model)
    if reason is not None:
        log.warning("the model's log-probs take TRL's plain path: %s", reason)
        return False, None
    return speed.padding_free, speed.logprob_chunk_tokens if speed.chunked_logprobs else None


class _DPOTrainer(_NoTelemetry, DPOTrainer):
    """TRL's DPOTrainer without the start-up telemetry ping."""


class _SFTTrainer(_NoTelemetry, SFTTrainer):
    """TRL's SFTTrainer without the start-up telemetry ping."""


class _ForwardLogs(TrainerCallback):
    """Hands every log record (with its `step`) to a user callback, on the main process."""

    def __init__(self, receiver: Callable[[dict[str, Any]], None]) -> None:
        self.receiver = receiver

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if logs and state.is_world_process_zero:
            self.receiver({**logs, "step": state.global_step})


class _UploadCheckpoints(TrainerCallback):
    """Uploads every `checkpoint-N` the Trainer saves to the store (every rank takes part)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    def on_save(self, args, state, control, **kwargs):
        self.store.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def _common_args(
    spec: TrainingSpec, output_dir: str, device: str, report_to: list[str] | None, save_steps: int
) -> dict[str, Any]:
    on_cpu = device == "cpu"
    return dict(
        output_dir=output_dir,
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        per_device_train_batch_size=spec.per_device_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        lr_scheduler_type="cosine",  # SimPO's recipe: cosine decay after linear warmup
        # transformers reads a warmup_steps below 1 as a ratio; 1.0 would mean one step.
        warmup_steps=min(spec.warmup_ratio, 0.999999),
        # transformers 5 name (gradient_checkpointing is its deprecated alias, mirrored).
        activation_checkpointing=spec.gradient_checkpointing,
        seed=spec.seed,
        data_seed=spec.seed,
        # fp32 master weights; bf16 autocast on GPUs. Pure-bf16 weights would round away
        # updates at the paper's learning rates (5e-7..1e-5).
        bf16=not on_cpu,
        fp16=False,
        use_cpu=on_cpu,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=_SAVE_TOTAL_LIMIT,
        # TensorBoard writes under <output_dir>/runs/ (transformers' default).
        report_to=report_to or "none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        optim="adamw_torch_fused" if spec.speed.fused_optimizer else "adamw_torch",
        torch_compile=spec.speed.compile,
        # FSDP / DeepSpeed from the file the operator mounts, when torchrun runs several.
        **training_arguments(),
    )


def _select_attention(model: PreTrainedModel, spec: TrainingSpec) -> None:
    """Set the model's attention implementation from `spec.speed.attention`."""
    attention = spec.speed.attention
    if attention == "auto":
        packed = spec.loss in ("spa", "simpo") and spec.speed.padding_free
        if not packed or fast_logps_unsupported(model) is not None:
            return
        attention = "varlen"
    name = register_varlen_attention() if attention == "varlen" else attention
    model.set_attn_implementation(name)
    log.info("attention implementation: %s", name)


def simpo_trainer(
    spec: TrainingSpec,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
) -> SPATrainer:
    """The `spa` (or `simpo`) trainer on a TRL preference dataset, as `train` builds it:
    the model's attention set from `spec.speed`, SimPO's β and γ, the lengths, the fast
    paths. `args`: TrainingArguments (see `_common_args`)."""
    _select_attention(model, spec)
    config = CPOConfig(
        **args,
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=spec.beta,
        simpo_gamma=spec.gamma,
        max_length=spec.max_length,
        max_completion_length=spec.max_completion_length,
        remove_unused_columns=False,
    )
    return SPATrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        use_weights=spec.loss == "spa",
        speed=spec.speed,
        callbacks=callbacks,
    )


def _build_trainer(
    spec: TrainingSpec,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pa.Table,
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
) -> Any:
    if spec.loss in ("spa", "simpo"):
        dataset = preference_dataset(pairs, with_weight=spec.loss == "spa")
        return simpo_trainer(spec, model, tokenizer, dataset, args, callbacks)
    _select_attention(model, spec)
    if spec.loss == "dpo":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        config = DPOConfig(
            **args, beta=spec.beta, loss_type=["sigmoid"], max_length=spec.max_length
        )
        return _DPOTrainer(
            model=model,
            ref_model=reference,
            args=config,
            train_dataset=preference_dataset(pairs, with_weight=False),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    if spec.loss == "sft":
        config = SFTConfig(
            **args, max_length=spec.max_length, completion_only_loss=True, packing=False
        )
        return _SFTTrainer(
            model=model,
            args=config,
            train_dataset=sft_dataset(pairs),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    raise ValueError(f"unknown loss {spec.loss!r}")


def _load_policy(model_path: str, gguf_file: str | None) -> PreTrainedModel:
    """The policy as a plain fp32 model on the CPU; the Trainer (or FSDP) places it."""
    from spa_core.models import load_causal_lm

    model = load_causal_lm(model_path, gguf_file, dtype="float32", device="cpu")
    if getattr(model, "is_quantized", False):
        raise ValueError(f"{model_path} loads as a quantized model, which cannot be fine-tuned")
    return model


def _read_result(final: Path) -> TrainResult:
    path = final / RESULT_FILE
    return _stored_result(json.loads(path.read_text()) if path.is_file() else {}, str(final))


def _stored_result(data: dict[str, Any], checkpoint_dir: str) -> TrainResult:
    return TrainResult(
        checkpoint_dir=checkpoint_dir,
        steps=data.get("steps", 0),
        final_loss=data.get("final_loss"),
        log_history=data.get("log_history", []),
        metrics=data.get("metrics", {}),
        resumed_from_step=data.get("resumed_from_step", 0),
    )


def _final_loss(log_history: list[dict[str, Any]]) -> float | None:
    losses = [r["loss"] for r in log_history if "loss" in r]
    return float(losses[-1]) if losses else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def train(
    pairs_path: str,
    *,
    model_path: str,
    gguf_file: str | None,
    output_dir: str,
    spec: TrainingSpec,
    device: str | None = None,
    report_to: list[str] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    save_steps: int | None = None,
    store: str | None = None,
) -> TrainResult:
    """Train the policy at `model_path` (a directory, with `gguf_file` inside it, or a Hub id)
    on the pairs Parquet at `pairs_path` (local or fsspec URI) with `spec.loss`.

    Publishes `<output_dir>/checkpoint-final` (model + tokenizer, safetensors), resumes
    from the last complete `checkpoint-N` (saved every `save_steps` steps, by default the
    spec's `save_steps`; two kept), and
    returns the stored result at once when `checkpoint-final` already exists. `device`:
    None follows `spec.gpus_per_node` (unset: a GPU when one is visible; 0: the CPU; N: N
    usable GPUs, else GPUsUnavailable at once); CPUs train in fp32, GPUs in bf16 autocast.
    `on_log` receives every log record (main process only).

    `store`: an fsspec URI (an object store) where the run's output is kept, `output_dir`
    then being local scratch space (under torchrun, one per node: see
    `checkpoints.scratch_dir`). Every `checkpoint-N` is uploaded there as the ranks save it,
    the run resumes from the store's last complete one (never from `output_dir`'s),
    `checkpoint-final` (and TensorBoard's `runs/`) is published there by rank 0, and the
    result's `checkpoint_dir` is its URI.
    """
    from spa_core.models import load_tokenizer, resolve_device, training_device

    root = Path(output_dir)
    final = root / FINAL_CHECKPOINT
    mirror = CheckpointStore(store, keep=_SAVE_TOTAL_LIMIT) if store else None
    if mirror is not None:
        if (record := mirror.final_record()) is not None:
            log.info("%s exists: training already done", mirror.url(FINAL_CHECKPOINT))
            return _stored_result(record, mirror.url(FINAL_CHECKPOINT))
    elif final.is_dir():
        log.info("%s exists: training already done", final)
        return _read_result(final)

    # Before the data and the model, so that missing GPUs or a bad file fail in seconds.
    device = resolve_device(device) if device else training_device(spec.gpus_per_node)
    pairs = load_pairs(pairs_path)
    tokenizer = load_tokenizer(model_path, gguf_file)
    model = _load_policy(model_path, gguf_file)  # fp32 master weights, even under bf16
    callbacks: list[TrainerCallback] = [_ForwardLogs(on_log)] if on_log else []
    if mirror is not None:
        callbacks.append(_UploadCheckpoints(mirror))
    args = _common_args(spec, str(root), device, report_to, save_steps or spec.save_steps)
    trainer = _build_trainer(spec, model, tokenizer, pairs, args, callbacks)

    if args.get("fsdp") and not getattr(trainer, "is_fsdp_enabled", False):
        # accelerate turns FSDP on for GPUs only: several CPU processes train with DDP.
        log.warning("%s names FSDP, but accelerate did not enable it on %s: training with DDP",
                    os.environ.get(DISTRIBUTED_CONFIG_ENV), device)
    # On a store every rank resumes from the store's checkpoint: a node's scratch space
    # holds only its own ranks' part of one.
    resume = mirror.restore(root) if mirror is not None else last_checkpoint(root)
    if resume:
        log.info("resuming from %s", mirror.url(Path(resume).name) if mirror else resume)
    resumed_from_step = (checkpoint_step(resume) or 0) if resume else 0
    output = trainer.train(resume_from_checkpoint=resume)

    partial = root / _PARTIAL
    if trainer.is_world_process_zero() and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    if getattr(trainer, "is_fsdp_enabled", False):
        # checkpoint-N are sharded (each rank writes its own DCP shard); the published model
        # is one safetensors file, so the final save gathers the full state dict to rank 0.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(partial))  # every rank: sharded models gather their weights
    log_history = _json_safe(trainer.state.log_history)
    result = TrainResult(
        checkpoint_dir=mirror.url(FINAL_CHECKPOINT) if mirror else str(final),
        steps=trainer.state.global_step,
        final_loss=_final_loss(log_history),
        log_history=log_history,
        metrics=_json_safe(dict(output.metrics)),
        resumed_from_step=resumed_from_step,
    )
    if trainer.is_world_process_zero():
        record = {k: v for k, v in asdict(result).items() if k != "checkpoint_dir"}
        record["spec"] = spec.model_dump(mode="json")
        (partial / RESULT_FILE).write_text(json.dumps(record, indent=1))
        os.replace(partial, final)
        # The final checkpoint supersedes the resumable ones (weights + optimizer state).
        for path in root.iterdir():
            if path.is_dir() and checkpoint_step(path) is not None:
                shutil.rmtree(path, ignore_errors=True)
        if mirror is not None:
            mirror.publish(final, extra=["runs"])
    trainer.accelerator.wait_for_everyone()
    return result
