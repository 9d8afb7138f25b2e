"""The `transformers` backend: batched generation in-process (CPU runs, fresh checkpoints).

Requests are grouped by sampling settings and sorted by prompt length, so each batch of
`generator.batch_size` pads little; prompts are left-padded; results come back in input
order. Greedy when temperature is 0. JSON schemas are enforced with xgrammar (the grammar
engine vLLM uses) where it is installed: a weak model's judge answers then always parse.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

from spa_core.backends.base import ChatRequest, ChatResult, OnDone
from spa_core.models import load_causal_lm, load_tokenizer, resolve_device, resolve_model
from spa_core.spec import GeneratorSpec, ModelSpec

__all__ = ["TransformersBackend"]

log = logging.getLogger(__name__)


class TransformersBackend:
    """A causal LM loaded with transformers, generating in batches."""

    supports_json_schema: bool = importlib.util.find_spec("xgrammar") is not None

    def __init__(
        self,
        path: str,
        gguf_file: str | None = None,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 16,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = batch_size
        started = time.monotonic()
        self.tokenizer = load_tokenizer(path, gguf_file, revision)
        self.model = load_causal_lm(path, gguf_file, revision, dtype, self.device)
        log.info(
            "loaded %s%s in %.1f s",
            path,
            f" ({gguf_file})" if gguf_file else "",
            time.monotonic() - started,
        )
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        self.pad_id = self.tokenizer.pad_token_id
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._grammars: dict[str, Any] = {}

    @classmethod
    def from_spec(
        cls, model: ModelSpec, generator: GeneratorSpec, *, model_path: str | None = None
    ) -> TransformersBackend:
        """The backend a run spec describes; `model_path` (a checkpoint) overrides the model."""
        path, gguf_file = resolve_model(model, model_path)
        return cls(
            path,
            gguf_file,
            revision=None if model_path else model.revision,
            dtype=model.dtype,
            batch_size=generator.batch_size,
        )

    def generate(
        self, requests: Sequence[ChatRequest], *, on_done: OnDone | None = None
    ) -> list[ChatResult]:
        """Results in request order."""
        results: list[ChatResult | None] = [None] * len(requests)
        prompts: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            ids = self._encode(request)
            if self.max_positions and len(ids) + 1 > self.max_positions:
                results[index] = ChatResult(
                    text=None,
                    error=f"prompt of {len(ids)} tokens exceeds the model's context of "
                    f"{self.max_positions}",
                )
                if on_done is not None:
                    on_done(1)
            else:
                prompts[index] = ids
        for batch in self._batches(requests, prompts):
            texts = self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch])
            for index, result in zip(batch, texts, strict=True):
                results[index] = result
            if on_done is not None:
                on_done(len(batch))
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _encode(self, request: ChatRequest) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def _batches(
        self, requests: Sequence[ChatRequest], prompts: dict[int, list[int]]
    ) -> list[list[int]]:
        """Indices grouped by (temperature, top_p, schema), sorted by length, cut into batches."""
        groups: dict[tuple[float, float, str | None], list[int]] = {}
        for index in prompts:
            request = requests[index]
            top_p = request.top_p if request.temperature > 0 else 1.0
            schema = _schema_key(request.json_schema) if self.supports_json_schema else None
            groups.setdefault((request.temperature, top_p, schema), []).append(index)
        batches = []
        for indices in groups.values():
            indices.sort(key=lambda i: len(prompts[i]))
            batches += [
                indices[k : k + self.batch_size] for k in range(0, len(indices), self.batch_size)
            ]
        return batches

    def _generate_batch(
        self, requests: list[ChatRequest], prompts: list[list[int]]
    ) -> list[ChatResult]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        max_tokens = [r.max_tokens for r in requests]
        if self.max_positions:
            max_tokens = [min(m, self.max_positions - width) for m in max_tokens]
        first = requests[0]
        options: dict[str, Any] = {
            "max_new_tokens": max(max_tokens),
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.pad_id,
        }
        if first.temperature > 0:
            options.update(
                do_sample=True, temperature=first.temperature, top_p=first.top_p, top_k=0
            )
            seeds = [r.seed for r in requests]
            if any(s is not None for s in seeds):
                # One seed per batch, derived from every request's seed: the same requests
                # give the same samples (per-row generators are not supported by generate).
                torch.manual_seed(zlib.crc32(repr(seeds).encode()))
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if first.json_schema is not None and self.supports_json_schema:
            options["logits_processor"] = [self._schema_processor(first.json_schema)]
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                **options,
            )
        new_tokens = output[:, width:].tolist()
        return [
            self._finish(tokens, limit)
            for tokens, limit in zip(new_tokens, max_tokens, strict=True)
        ]

    def _schema_processor(self, schema: dict[str, Any]) -> Any:
        """A fresh xgrammar logits processor (one per generate call) for a JSON schema."""
        import xgrammar as xgr
        from xgrammar.contrib.hf import LogitsProcessor

        key = _schema_key(schema)
        if key not in self._grammars:
            if not self._grammars:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.model.config.vocab_size,
                    stop_token_ids=self.eos_ids)
                self._compiler = xgr.GrammarCompiler(info)
            # Compact JSON: free whitespace let a weak model pad until max_tokens ran out.
            self._grammars[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
        return LogitsProcessor(self._grammars[key])

    def _finish(self, tokens: list[int], limit: int) -> ChatResult:
        """Cut one row at its first end-of-sequence token or its own max_tokens."""
        for position, token in enumerate(tokens[:limit]):
            if token in self.eos_ids:
                text = self.tokenizer.decode(tokens[:position], skip_special_tokens=True)
                return ChatResult(text=text, finish_reason="stop")
        text = self.tokenizer.decode(tokens[:limit], skip_special_tokens=True)
        return ChatResult(text=text, finish_reason="length")

    def close(self) -> None:
        """Drop the model so its memory can be reclaimed."""
        self.model = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"TransformersBackend(device={self.device!r}, batch_size={self.batch_size})"


def _schema_key(schema: dict[str, Any] | None) -> str | None:
    return None if schema is None else json.dumps(schema, sort_keys=True)


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS, the model's, and ChatML's <|im_end|>."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)
