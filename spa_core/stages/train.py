"""Stage `train`: uncertainty-weighted SimPO (or an ablation) on the pairs of this iteration.

The trainer reads only `pairs/pairs.parquet` and writes a Hugging Face checkpoint to
`train/checkpoint-final`; intermediate checkpoints under `train/` let a killed run resume.
On an object store the ranks train on local disk, and the trainer keeps `train/checkpoint-N`
and `train/checkpoint-final` on the store (`spa_core.training.checkpoints`).

Under torchrun every rank runs this stage; only global rank 0 starts, clears and finishes its
manifest (a rank clearing `train/` while another writes its manifest loses that write).
"""

from __future__ import annotations

import os
from pathlib import Path

from spa_core.layout import PAIRS, TRAIN_LOG
from spa_core.stages.context import StageContext
from spa_core.stages.generate import upstream_hash
from spa_core.stages.manifest import StageManifest, config_hash

__all__ = ["NoPairs", "run_train"]

STAGE = "train"


class NoPairs(RuntimeError):
    """Denoising kept no pair, so there is nothing to train on."""


def run_train(ctx: StageContext) -> dict:
    from spa_core.models import resolve_model
    from spa_core.training import train

    spec = ctx.spec
    chash = config_hash(STAGE, spec.training, ctx.policy_id(), upstream_hash(ctx, "pairs"))
    main = _is_main_rank()
    # Other ranks only read: rank 0 decides, and the trainer's rendezvous waits for it.
    manifest = (StageManifest.open(ctx.dir, STAGE, chash, force=ctx.force) if main
                else _finished(ctx, chash))
    if manifest is not None and manifest.complete:
        return manifest.stats
    pair_stats = StageManifest.load(ctx.dir, "pairs").stats
    if not pair_stats.get("pairs"):
        raise NoPairs(
            f"denoising kept no pair in {ctx.dir.url('pairs')} "
            f"({pair_stats}); use more prompts, a larger sampling.numSamples, a larger "
            "denoising.rho or a smaller denoising.delta"
        )
    model_path, gguf_file = resolve_model(spec.model, ctx.policy_path())
    if ctx.dir.is_local:
        output = Path(ctx.dir.path(STAGE))
        result = _train(ctx, train, model_path, gguf_file, output)
    else:  # train on local disk; the trainer uploads the checkpoints
        from spa_core.training.checkpoints import scratch_dir

        store = ctx.dir.url(STAGE)
        with scratch_dir(store) as scratch:
            result = _train(ctx, train, model_path, gguf_file, scratch, store=store)
    stats = {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "loss": spec.training.loss,
        "resumed_from_step": result.resumed_from_step,
        **{k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
    }
    if main and manifest is not None:
        ctx.dir.write_json(TRAIN_LOG, result.log_history)
        manifest.finish(ctx.dir, **stats)
    return stats


def _finished(ctx: StageContext, chash: str) -> StageManifest | None:
    """The stage's manifest if it finished with this configuration (and no --force)."""
    manifest = StageManifest.load(ctx.dir, STAGE)
    if manifest is None or ctx.force or manifest.config_hash != chash or not manifest.complete:
        return None
    return manifest


def _is_main_rank() -> bool:
    """Global rank 0 under torchrun, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def _train(ctx: StageContext, train, model_path: str, gguf_file: str | None, output: Path,  # noqa: ANN001, ANN202
           store: str | None = None):
    # The generation backends hold a copy of the policy; free it before training.
    ctx.close()
    return train(
        ctx.dir.url(PAIRS),
        model_path=model_path,
        gguf_file=gguf_file,
        output_dir=str(output),
        spec=ctx.spec.training,
        report_to=list(ctx.spec.training.report_to),
        store=store,
    )
