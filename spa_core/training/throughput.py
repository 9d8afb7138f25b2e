"""Training-throughput benchmark: the project's trainer against TRL's CPOTrainer (SimPO).

``python -m spa_core.training.throughput`` builds random-init Llama-shaped models and
synthetic preference pairs, and trains each variant for ``--warmup`` + ``--steps`` optimizer
steps in this process, one after the other on a fresh model and the same pairs (same seed).
It prints one JSON line per (shape, lengths mode, variant): tokens/s after warm-up, MFU,
peak GPU memory, and for the project's variants the ratios to TRL's figures of the same
shape and mode.

Lengths (``--lengths``): ``mix`` (the default) draws each pair's prompt, chosen and rejected
lengths independently from log-normal distributions, as real preference data is ragged (a
short refusal against a long answer); ``fixed`` gives every pair the same lengths, so that
padding costs nothing. Tokens/s counts real tokens only: those of the rows the trainer
tokenized (after its own truncation), both sides of every pair of the measured steps,
never padding; the same count for TRL and for the project's trainer.

Variants: ``trl`` is TRL's CPOTrainer (``loss_type="simpo"``, ``cpo_alpha=0``) with its own
defaults; ``spa`` is `spa_core.training.trainer.SPATrainer` as `spa train` builds it, with
the default `TrainingSpeedSpec`; ``spa:key=value,...`` overrides speed settings (and
``gradient_checkpointing``), e.g. ``spa:padding_free=false`` shows what packing brings.

    python -m spa_core.training.throughput                      # GPU: 135m, 1b, 8b-8l
    python -m spa_core.training.throughput --lengths mix fixed  # both modes
    python -m spa_core.training.throughput --shapes tiny        # CPU smoke run

MFU = 6 x parameters x tokens/s / peak bf16 dense FLOP/s of the GPU (`--peak-tflops`,
default: 989 on H100/H200, 312 on A100; none on CPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["SHAPES", "PairLengths", "Variant", "draw_lengths", "main", "parse_variant",
           "run_variant"]

#: Llama-shaped configurations (random init): hidden, intermediate, layers, heads, kv heads,
#: vocabulary, tied embeddings.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
             "tie_word_embeddings": True},
    # SmolLM2-135M
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
             "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
             "tie_word_embeddings": True},
    # Llama-3.2-1B
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
           "tie_word_embeddings": True, "rope_theta": 500000.0},
    # Llama-3.1-8B widths, 8 layers (2.80B parameters: untied 128k x 4096 embeddings and head)
    "8b-8l": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 8,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "tie_word_embeddings": False, "rope_theta": 500000.0},
}
#: `--prompt-tokens`, `--completion-tokens` by mode: the lengths of every pair (`fixed`);
#: the caps of the drawn lengths, the trainer's own default limits (`mix`).
DEFAULT_TOKENS = {"fixed": (128, 384), "mix": (1024, 1024)}
#: Log-normal length mix: medians (tokens) at the default caps, and the spread (sigma of
#: the log): a tenth of prompts under ~38 tokens and a tenth over ~380; answers ~80 / ~790.
_MEDIANS = {"prompt": 120.0, "completion": 250.0}
_SIGMA = 0.9
_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}
_BOOLEAN = {"true": True, "false": False, "1": True, "0": False, "on": True, "off": False}


@dataclass(frozen=True)
class Variant:
    """One trainer configuration to measure."""

    name: str
    trainer: str  # "spa" or "trl"
    overrides: dict[str, Any]


def parse_variant(text: str) -> Variant:
    """`trl`, `spa`, or `spa:key=value,...` (speed settings or gradient_checkpointing)."""
    from spa_core.spec import TrainingSpeedSpec

    trainer, _, rest = text.partition(":")
    if trainer not in ("spa", "trl"):
        raise ValueError(f"variant {text!r}: the trainer must be 'spa' or 'trl'")
    if trainer == "trl" and rest:
        raise ValueError(f"variant {text!r}: TRL's trainer takes no settings")
    known = set(TrainingSpeedSpec.model_fields) | {"gradient_checkpointing"}
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(
                f"variant {text!r}: expected key=value with a key among {', '.join(sorted(known))}"
            )
        overrides[key] = _BOOLEAN.get(value.lower(), value)
    return Variant(text, trainer, overrides)


def _word_tokenizer(vocab_size: int) -> Any:
    """One token per word `w<i>`: synthetic texts tokenize to exactly their word count."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    words = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>")


@dataclass(frozen=True)
class PairLengths:
    """Token lengths of each synthetic pair: prompts with their BOS, completions with their
    EOS (what the trainers tokenize them to)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def draw_lengths(mode: str, n: int, prompt_tokens: int, completion_tokens: int,
                 seed: int) -> PairLengths:
    """The lengths of `n` pairs: all `prompt_tokens` / `completion_tokens` (`fixed`), or each
    drawn independently (`mix`) from a log-normal capped at those, at least 2 tokens.

    The mix's medians are 120 prompt and 250 completion tokens at the default caps (1024
    each), scaled down in proportion to smaller caps (16-token prompts: a median of 1.9),
    so that a small smoke shape keeps the same spread relative to its caps.
    """
    if mode == "fixed":
        return PairLengths([prompt_tokens] * n, [completion_tokens] * n, [completion_tokens] * n)
    if mode != "mix":
        raise ValueError(f"lengths mode {mode!r}: expected 'mix' or 'fixed'")
    gen = torch.Generator().manual_seed(seed)
    default_prompt, default_completion = DEFAULT_TOKENS["mix"]

    def draw(median: float, cap: int, default_cap: int) -> list[int]:
        median *= min(1.0, cap / default_cap)
        values = torch.empty(n, dtype=torch.float64).log_normal_(math.log(median), _SIGMA,
                                                                  generator=gen)
        return values.round().clamp(2, max(cap, 2)).long().tolist()

    prompt = draw(_MEDIANS["prompt"], prompt_tokens, default_prompt)
    chosen = draw(_MEDIANS["completion"], completion_tokens, default_completion)
    rejected = draw(_MEDIANS["completion"], completion_tokens, default_completion)
    return PairLengths(prompt, chosen, rejected)


def _pairs(lengths: PairLengths, vocab_size: int, seed: int) -> Any:
    from datasets import Dataset

    gen = torch.Generator().manual_seed(seed)

    def text(length: int) -> str:
        ids = torch.randint(3, vocab_size, (length,), generator=gen).tolist()
        return " ".join(f"w{i}" for i in ids)

    # The trainer adds a BOS to the prompt and an EOS to each completion, and tokenizes
    # prompt + completion as one string: the completion starts with a space.
    n = len(lengths.prompt)
    return Dataset.from_dict({
        "prompt": [text(length - 1) for length in lengths.prompt],
        "chosen": [" " + text(length - 1) for length in lengths.chosen],
        "rejected": [" " + text(length - 1) for length in lengths.rejected],
        "weight": torch.rand(n, generator=gen).add(0.5).tolist(),
    })


class _TokenCounter:
    """Real tokens of every batch the trainer collates, in order (one batch per optimizer
    step): both sides of each pair as the trainer tokenized them, and the size of TRL's
    padded batch (chosen and rejected padded to the longest of either side)."""

    def __init__(self) -> None:
        self.real: list[int] = []
        self.padded: list[int] = []

    def wrap(self, collate: Any) -> Any:
        def counting(features: list[dict[str, Any]]) -> Any:
            lengths = [len(f[f"{side}_input_ids"]) for f in features
                       for side in ("chosen", "rejected")]
            self.real.append(sum(lengths))
            self.padded.append(len(lengths) * max(lengths))
            return collate(features)

        return counting


class _StepTimer:
    """Wall time of every optimizer step (the device synchronised at both ends)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                _synchronize()
                timer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                _synchronize()
                timer.durations.append(time.perf_counter() - timer.started)

        self.started = 0.0
        self.durations: list[float] = []
        self.callback = Callback()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in _PEAK_TFLOPS.items() if k in name), None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=TRLExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def _trainer(variant: Variant, model: Any, tokenizer: Any, dataset: Any, args: argparse.Namespace,
             lengths: str, output_dir: str, device: str, callbacks: list[Any]) -> Any:
    from spa_core.spec import TrainingSpec
    from spa_core.training.trainer import _common_args, simpo_trainer

    with _quiet():
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    prompt_tokens, completion_tokens = _tokens(args, lengths)
    speed_keys = set(variant.overrides) - {"gradient_checkpointing"}
    # The limits are the lengths' caps: neither trainer truncates a pair, so both train on
    # the same tokens (TRL's CPOTrainer cuts completions to max_length - prompt only, ours
    # to max_completion_length too; neither cuts prompts).
    spec = TrainingSpec(
        loss="spa", learning_rate=1e-6, warmup_ratio=0.0, max_steps=args.warmup + args.steps,
        per_device_batch_size=args.pairs_per_step,
        max_length=prompt_tokens + completion_tokens,
        max_completion_length=completion_tokens,
        gradient_checkpointing=bool(variant.overrides.get("gradient_checkpointing", False)),
        speed={k: variant.overrides[k] for k in speed_keys},
    )
    common = _common_args(spec, output_dir, device, None, save_steps=10**9)
    common.update(save_strategy="no", logging_steps=10**9, seed=args.seed)
    if variant.trainer == "trl":
        # TRL's defaults for everything the benchmark does not pin (its optimizer included).
        for key in ("optim", "torch_compile"):
            common.pop(key)
        config = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=spec.beta,
                           simpo_gamma=spec.gamma, max_length=spec.max_length)
        trainer = CPOTrainer(model=model, args=config, train_dataset=dataset.remove_columns("weight"),
                             processing_class=tokenizer, callbacks=callbacks)
        trainer._send_telemetry = lambda: None  # offline
        return trainer
    # Exactly the trainer `spa train` builds, on the synthetic pairs.
    return simpo_trainer(spec, model, tokenizer, dataset, common, callbacks)


def _tokens(args: argparse.Namespace, lengths: str) -> tuple[int, int]:
    """(prompt, completion) tokens of `lengths` mode: the options, or the mode's defaults."""
    default_prompt, default_completion = DEFAULT_TOKENS[lengths]
    return (args.prompt_tokens or default_prompt, args.completion_tokens or default_completion)


def run_variant(shape: str, variant: Variant, args: argparse.Namespace,
                lengths: str = "mix") -> dict[str, Any]:
    """Train `variant` on a fresh random-init `shape` model and the pairs of `lengths` mode;
    its throughput record."""
    from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192)
    tokenizer = _word_tokenizer(config.vocab_size)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    steps = args.warmup + args.steps
    prompt_tokens, completion_tokens = _tokens(args, lengths)
    drawn = draw_lengths(lengths, steps * args.pairs_per_step, prompt_tokens, completion_tokens,
                         args.seed)
    dataset = _pairs(drawn, config.vocab_size, args.seed)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # fp32 master weights, as `spa train` loads them
    params = sum(p.numel() for p in model.parameters())
    timer, counter = _StepTimer(), _TokenCounter()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out, _quiet():
        trainer = _trainer(variant, model, tokenizer, dataset, args, lengths, out, device,
                           [timer.callback])
        trainer.remove_callback(PrinterCallback)  # stdout carries the JSON lines alone
        trainer.data_collator = counter.wrap(trainer.data_collator)
        output = trainer.train()
    if len(counter.real) != len(timer.durations):
        raise RuntimeError(f"{len(counter.real)} batches for {len(timer.durations)} steps")
    measured = timer.durations[args.warmup:]
    real, padded = sum(counter.real[args.warmup:]), sum(counter.padded[args.warmup:])
    tokens_per_s = real / sum(measured)
    peak = _peak_tflops(device) if args.peak_tflops is None else args.peak_tflops
    record = {
        "shape": shape,
        "lengths": lengths,
        "variant": variant.name,
        "trainer": variant.trainer,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "parameters": params,
        "pairs_per_step": args.pairs_per_step,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "tokens_per_pair": real / (len(measured) * args.pairs_per_step),
        "padding_in_trl_batches": 1 - real / padded,
        "step_seconds": sum(measured) / len(measured),
        "tokens_per_s": tokens_per_s,
        "mfu": 6 * params * tokens_per_s / (peak * 1e12) if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        "train_loss": output.training_loss,
        "steps": len(measured),
        "step_tokens": counter.real,
    }
    del trainer, model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return record


def _compare(record: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    if baseline is None or record["trainer"] == "trl":
        return record
    ratios = {"tokens_per_s_vs_trl": record["tokens_per_s"] / baseline["tokens_per_s"]}
    if record["peak_memory_gb"] and baseline["peak_memory_gb"]:
        ratios["peak_memory_vs_trl"] = record["peak_memory_gb"] / baseline["peak_memory_gb"]
    return {**record, **ratios}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spa_core.training.throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES),
                        help="model shapes (default: 135m 1b 8b-8l on a GPU, tiny on a CPU)")
    parser.add_argument("--variant", dest="variants", nargs="+", default=["trl", "spa"],
                        metavar="VARIANT", help="trl, spa, or spa:key=value,... (default: trl spa)")
    parser.add_argument("--lengths", nargs="+", choices=sorted(DEFAULT_TOKENS), default=["mix"],
                        help="mix: lengths drawn per pair (log-normal); fixed: one length for "
                             "all (default: mix)")
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int,
                        help="prompt tokens with the BOS: the cap (mix, default 1024) or the "
                             "length (fixed, default 128)")
    parser.add_argument("--completion-tokens", type=int,
                        help="completion tokens with the EOS: the cap (mix, default 1024) or "
                             "the length (fixed, default 384)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    args = parser.parse_args(argv)
    for name, least in (("pairs_per_step", 1), ("steps", 1), ("prompt_tokens", 2),
                        ("completion_tokens", 8)):
        if getattr(args, name) is not None and getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if any(sum(_tokens(args, mode)) < 16 for mode in args.lengths):
        parser.error("--prompt-tokens + --completion-tokens must be at least 16")
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ValueError as exc:
        parser.error(str(exc))
    on_gpu = torch.cuda.is_available() and not args.cpu
    shapes = args.shapes or (["135m", "1b", "8b-8l"] if on_gpu else ["tiny"])
    for shape in shapes:
        for lengths in dict.fromkeys(args.lengths):
            baseline = None
            # TRL first, so that every other record can carry its ratios.
            for variant in sorted(variants, key=lambda v: v.trainer != "trl"):
                try:
                    record = run_variant(shape, variant, args, lengths)
                except torch.OutOfMemoryError as exc:
                    record = {"shape": shape, "lengths": lengths, "variant": variant.name,
                              "error": f"out of memory: {exc}"}
                    gc.collect()
                    torch.cuda.empty_cache()
                else:
                    if variant.trainer == "trl":
                        baseline = record
                    record = _compare(record, baseline)
                print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v)
                                      else v) for k, v in record.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
