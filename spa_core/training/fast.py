"""Fast paths of the SimPO / SPA trainer: the same per-sequence log-probs, computed cheaper.

The plain computation (TRL's CPOTrainer) pads chosen and rejected to one length, runs the
model over the padded `(2B, L)` grid, materialises `(2B, L, V)` logits and takes a
log-softmax over the full vocabulary at every position, prompt and padding included. Here:

* `token_logps` computes `log_softmax(h @ W.T)[target]` for the completion tokens only,
  `chunk_tokens` rows at a time, in a custom autograd function that keeps no logits: the
  backward pass recomputes each chunk's logits from the hidden states and the output
  layer's weight. Peak memory for the head is one `(chunk_tokens, V)` block instead of
  `(2B, L, V)`; the log-softmax is taken in fp32 whatever the compute dtype.
* `pack_pairs` lays the chosen and rejected sequences of a micro-batch end to end in one row
  without padding, positions restarting at 0 for each (padding-free). Attention stays
  within each sequence: transformers builds a block-diagonal mask from the positions
  (sdpa, eager), or `varlen_attention` (registered as ``attention: varlen``) runs
  PyTorch's variable-length flash attention on the sequence boundaries.
* `completion_logps` runs the model once on the packed (or padded) micro-batch with a
  temporary output layer that returns completion-token log-probs instead of logits, then
  averages them per sequence: the length-normalised log-probs SimPO needs.

All of it is plain PyTorch and runs on CPUs as on GPUs; the tests hold it equal to the
straightforward computation.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VARLEN_ATTENTION",
    "PackedBatch",
    "completion_logps",
    "fast_logps_unsupported",
    "pack_pairs",
    "register_varlen_attention",
    "token_logps",
    "varlen_attention",
]

#: The name `register_varlen_attention` gives `varlen_attention` in transformers' registry.
VARLEN_ATTENTION = "spa_varlen"
log = logging.getLogger(__name__)
IGNORE_INDEX = -100


# --- the output layer, chunk by chunk --------------------------------------------------


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `tensor` runs in here: the autocast dtype when autocast is on."""
    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


class _ChunkedTokenLogps(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[targets], chunk by chunk, logits recomputed in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_tokens: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            lse = torch.empty_like(out)
            for start in range(0, hidden.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                logits = (hidden[rows].to(dtype) @ w.T).float()
                lse[rows] = torch.logsumexp(logits, dim=-1)
                out[rows] = logits.gather(1, targets[rows, None]).squeeze(1) - lse[rows]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_tokens, ctx.dtype = chunk_tokens, dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        dtype, chunk_tokens = ctx.dtype, ctx.chunk_tokens
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for start in range(0, hidden.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                h = hidden[rows].to(dtype)
                # d/dlogits of (logit[target] - logsumexp) = onehot(target) - softmax
                probs = torch.exp((h @ w.T).float() - lse[rows, None])
                grad = probs.mul_(-grad_out[rows, None])
                grad.scatter_add_(1, targets[rows, None], grad_out[rows, None])
                grad = grad.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = (grad @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight.add_(grad.T @ h)  # fp32 += compute dtype: no fp32 temporary
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_tokens: int | None = 1024,
) -> torch.Tensor:
    """`log_softmax(hidden @ weight.T, -1)[i, targets[i]]` in fp32, shape `(N,)`.

    `hidden` `(N, H)`, `weight` `(V, H)` (the output layer's), `targets` `(N,)` token ids.
    The matmul runs in the autocast dtype when autocast is on. `chunk_tokens=None` is the
    straightforward computation (full `(N, V)` logits kept for autograd); an int computes
    the same `chunk_tokens` rows at a time and keeps no logits.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"token_logps needs hidden (N, H) and targets (N,), got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if chunk_tokens is None:
        logits = F.linear(hidden, weight).float()
        return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    return _ChunkedTokenLogps.apply(hidden, weight, targets, chunk_tokens, _compute_dtype(hidden))


# --- packing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedBatch:
    """A micro-batch of pairs as one model input, and where its completion tokens are."""

    input_ids: torch.Tensor
    """`(1, T)` packed, or `(2B, L)` padded (chosen rows, then rejected rows)."""
    attention_mask: torch.Tensor | None
    """None when packed; the padding mask otherwise."""
    position_ids: torch.Tensor | None
    """`(1, T)` positions restarting at 0 in each sequence when packed; None otherwise."""
    index: torch.Tensor
    """Flat positions (into `input_ids.view(-1)`) whose next token is a completion token."""
    targets: torch.Tensor
    """The completion token each of those positions predicts."""
    sequence: torch.Tensor
    """Which of the 2B sequences each target belongs to (chosen i: i, rejected i: B + i)."""
    pairs: int
    """B."""
    cu_seqlens: torch.Tensor | None
    """int32 `(2B + 1,)` sequence boundaries in the packed row; None when padded."""
    max_length: int
    """The longest sequence, in tokens."""


def pack_pairs(batch: dict[str, Any], *, padding_free: bool, pad_token_id: int) -> PackedBatch:
    """The chosen and rejected sequences of a TRL preference batch as one model input.

    `batch` holds `{chosen,rejected}_{input_ids,attention_mask,labels}` `(B, L)` tensors, as
    TRL's collator pads them; labels are -100 outside the completion. Padding-free lays the
    2B sequences end to end; otherwise they are padded to one length, as TRL does.
    """
    sides = [
        (batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"].bool(), batch[f"{side}_labels"])
        for side in ("chosen", "rejected")
    ]
    pairs = sides[0][0].shape[0]
    if padding_free:
        ids = torch.cat([ids[mask] for ids, mask, _ in sides])
        labels = torch.cat([labels[mask] for _, mask, labels in sides])
        lengths = torch.cat([mask.sum(1) for _, mask, _ in sides])
        sequence = torch.repeat_interleave(torch.arange(len(lengths), device=ids.device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(len(ids), device=ids.device) - starts[sequence]
        cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        input_ids, attention_mask = ids[None], None
        position_ids: torch.Tensor | None = positions[None]
        max_length = int(lengths.max())
    else:
        width = max(ids.shape[1] for ids, _, _ in sides)

        def pad(t: torch.Tensor, value: int) -> torch.Tensor:
            return F.pad(t, (0, width - t.shape[1]), value=value)

        input_ids = torch.cat([pad(ids, pad_token_id) for ids, _, _ in sides])
        attention_mask = torch.cat([pad(mask.long(), 0) for _, mask, _ in sides])
        padded_labels = torch.cat([pad(labels, IGNORE_INDEX) for _, _, labels in sides])
        labels = padded_labels.view(-1)
        sequence = torch.arange(2 * pairs, device=input_ids.device).repeat_interleave(width)
        position_ids, cu_seqlens, max_length = None, None, width
    # Position t predicts token t + 1 of the same sequence.
    follows = (labels[1:] != IGNORE_INDEX) & (sequence[1:] == sequence[:-1])
    index = follows.nonzero().squeeze(1)
    return PackedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        index=index,
        targets=labels[index + 1],
        sequence=sequence[index],
        pairs=pairs,
        cu_seqlens=cu_seqlens,
        max_length=max_length,
    )


# --- the model call ----------------------------------------------------------------------

#: Config attributes of models whose logits are not `hidden @ W.T` (softcapping, scaling).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def fast_logps_unsupported(model: nn.Module) -> str | None:
    """Why `completion_logps` cannot take the output layer's place in `model`, or None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return f"its output layer is {type(head).__name__}, not a Linear"
    if head.bias is not None:
        return "its output layer has a bias"
    config = getattr(model, "config", None)
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0, 0, 0.0):
            return f"its logits are transformed after the output layer ({name}={value})"
    return None


class _TokenLogpsHead(nn.Module):
    """Stands in for the output layer during one forward pass: from the final hidden states
    `(rows, L, H)` to the log-probs of `packed.targets` at `packed.index`, shape `(K,)`."""

    def __init__(self, head: nn.Linear, packed: PackedBatch, chunk_tokens: int | None) -> None:
        super().__init__()
        # Not registered as a child: the real layer stays the model's, parameters and all.
        self.__dict__["head"] = head
        self.packed, self.chunk_tokens = packed, chunk_tokens

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])[self.packed.index]
        # Read the weight now: FSDP swaps the unsharded tensor in for the forward pass.
        return token_logps(rows, self.head.weight, self.packed.targets,
                           chunk_tokens=self.chunk_tokens)


@contextmanager
def _output_layer(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    original = model.get_output_embeddings()
    model.set_output_embeddings(layer)
    try:
        yield
    finally:
        model.set_output_embeddings(original)


def completion_logps(
    model: nn.Module,
    batch: dict[str, Any],
    *,
    padding_free: bool,
    chunk_tokens: int | None,
    pad_token_id: int,
    unwrapped: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean log-prob per completion token of each chosen and each rejected sequence, `(B,)`
    each: what TRL's `get_batch_logps(..., average_log_prob=True)` returns, in fp32.

    `model` is called (it may be wrapped: DDP, FSDP, compiled); `unwrapped` is the Hugging
    Face model inside it whose output layer is swapped for the call (default: `model`).
    """
    inner = model if unwrapped is None else unwrapped
    packed = pack_pairs(batch, padding_free=padding_free, pad_token_id=pad_token_id)
    kwargs: dict[str, Any] = {"use_cache": False}
    if packed.position_ids is not None:
        kwargs["position_ids"] = packed.position_ids
    if packed.attention_mask is not None:
        kwargs["attention_mask"] = packed.attention_mask
    if packed.cu_seqlens is not None and _attention(inner) == VARLEN_ATTENTION:
        kwargs.update(
            cu_seq_lens_q=packed.cu_seqlens, cu_seq_lens_k=packed.cu_seqlens,
            max_length_q=packed.max_length, max_length_k=packed.max_length,
        )
    head = _TokenLogpsHead(inner.get_output_embeddings(), packed, chunk_tokens)
    with _output_layer(inner, head):
        logps = model(packed.input_ids, **kwargs).logits
    sums = torch.zeros(2 * packed.pairs, dtype=logps.dtype, device=logps.device)
    sums = sums.index_add(0, packed.sequence, logps)
    counts = torch.bincount(packed.sequence, minlength=2 * packed.pairs)
    means = sums / counts
    return means[: packed.pairs], means[packed.pairs :]


def _attention(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


# --- variable-length attention -----------------------------------------------------------


#: Cleared when PyTorch's flash varlen kernel fails once; then every call attends per sequence.
_FLASH_VARLEN = {"usable": True}


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    """The keyword parameters of this PyTorch's `varlen_attn` (none: it has none)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def _flash_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, longest: int,
    scaling: float | None,
) -> torch.Tensor | None:
    """PyTorch's variable-length flash attention, causal, `(T, heads, D)`; None where this
    PyTorch's `varlen_attn` cannot compute exactly that (its API changed across 2.10-2.15)."""
    params = _varlen_parameters()
    if not params or not _FLASH_VARLEN["usable"]:
        return None
    from torch.nn.attention.varlen import varlen_attn

    kwargs: dict[str, Any] = {}
    if "window_size" in params:  # 2.11 and later
        kwargs["window_size"] = (-1, 0)
    elif "is_causal" in params:  # 2.10
        kwargs["is_causal"] = True
    else:
        return None
    default_scale = scaling is None or scaling == q.shape[-1] ** -0.5
    if "scale" in params:
        kwargs["scale"] = scaling
    elif not default_scale:
        return None
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    try:
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, longest, longest, **kwargs)
    except (RuntimeError, TypeError) as exc:  # no kernel for this GPU, head size or build
        _FLASH_VARLEN["usable"] = False
        log.warning("PyTorch's varlen attention failed (%s); attending per sequence", exc)
        return None


def _half_precision(q: torch.Tensor) -> torch.dtype | None:
    """The half-precision dtype the flash kernel computes CUDA attention in, or None.

    Under autocast the query is not always half precision itself: in an fp32 model the
    rotary embedding's fp32 cos/sin promote the (autocast bf16) projections back to fp32.
    Autocast would run sdpa in its half dtype all the same, so the flash kernel does too.
    """
    half = (torch.float16, torch.bfloat16)
    if not q.is_cuda:
        return None
    if q.dtype in half:
        return q.dtype
    dtype = _compute_dtype(q)  # the autocast dtype, else fp32 (q's own): no flash kernel
    return dtype if dtype in half else None


def varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence (transformers' attention interface).

    With the sequence boundaries (`cu_seq_lens_q`, as `completion_logps` passes them) and a
    CUDA input in half precision or under half-precision autocast, PyTorch's variable-length
    flash attention (in that precision); otherwise one scaled-dot-product attention per
    sequence. Without boundaries (a padded batch, say), transformers' sdpa attention with its
    mask. Returns `(1, T, heads, head_dim)`.
    """
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if dropout:
        raise ValueError("varlen attention does not implement attention dropout")
    # (1, heads, T, D) -> (T, heads, D)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    gqa = q.shape[1] != k.shape[1]
    half = _half_precision(q)
    if half is not None:
        longest = int(kwargs.get("max_length_q") or int((cu_seqlens[1:] - cu_seqlens[:-1]).max()))
        out = _flash_varlen(q.to(half), k.to(half), v.to(half), cu_seqlens, longest, scaling)
        if out is not None:
            return out[None], None
    bounds = cu_seqlens.tolist()
    parts = [
        F.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling,
            enable_gqa=gqa,
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(parts, dim=2).transpose(1, 2), None


def _varlen_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """Packed inputs need no mask (the boundaries say it all); padded ones get sdpa's."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def register_varlen_attention() -> str:
    """Register `varlen_attention` with transformers; returns the name to select it by."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
    AttentionMaskInterface.register(VARLEN_ATTENTION, _varlen_mask)
    return VARLEN_ATTENTION
