"""The trainer's fast paths equal the straightforward computation: chunked output-layer
log-probs, padding-free packing, and variable-length attention, in values and gradients."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from spa_core.training.fast import (
    completion_logps,
    fast_logps_unsupported,
    pack_pairs,
    register_varlen_attention,
    token_logps,
)


def tiny_llama(attention: str = "sdpa", **config_kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, attn_implementation=attention, **config_kw,
    )
    return LlamaForCausalLM(config).eval()


def preference_batch(pairs: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """TRL-collated pairs: ragged prompts and completions, right padding, -100 labels."""
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    prompts = [int(torch.randint(2, 9, (1,), generator=gen)) for _ in range(pairs)]
    for side in ("chosen", "rejected"):
        rows = []
        for prompt in prompts:
            completion = int(torch.randint(1, 12, (1,), generator=gen))
            rows.append((torch.randint(1, 97, (prompt + completion,), generator=gen), prompt))
        width = max(len(ids) for ids, _ in rows) + 2  # extra padding, as a collator may leave
        ids = torch.zeros(pairs, width, dtype=torch.long)
        mask = torch.zeros(pairs, width, dtype=torch.long)
        labels = torch.full((pairs, width), -100, dtype=torch.long)
        for i, (tokens, prompt) in enumerate(rows):
            ids[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = 1
            labels[i, prompt : len(tokens)] = tokens[prompt:]
        batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask,
                      f"{side}_labels": labels})
    return batch


def trl_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's own computation: padded concatenation, full logits, get_batch_logps (mean)."""
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=TRLExperimentalWarning)
        from trl.experimental.cpo import CPOTrainer

    cat = CPOTrainer.concatenated_inputs(batch, padding_value=0)
    logits = model(cat["concatenated_input_ids"], attention_mask=cat["concatenated_attention_mask"],
                   use_cache=False).logits
    logps = CPOTrainer.get_batch_logps(logits, cat["concatenated_labels"], average_log_prob=True)
    pairs = batch["chosen_input_ids"].shape[0]
    return logps[:pairs], logps[pairs:]


def gradients(model, chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    # Any function of both sides will do; this one weighs each sequence differently.
    scale = torch.arange(1, len(chosen) + 1, dtype=chosen.dtype, device=chosen.device)
    ((chosen - 2 * rejected) * scale).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


# --- token_logps ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 10_000])
def test_chunked_token_logps_equal_the_full_log_softmax(chunk_tokens):
    torch.manual_seed(1)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    upstream = torch.randn(37, dtype=torch.float64)

    plain = token_logps(hidden, weight, targets, chunk_tokens=None)
    expected = torch.log_softmax(hidden @ weight.T, -1)[torch.arange(37), targets]
    torch.testing.assert_close(plain, expected.float())
    grads = torch.autograd.grad((plain * upstream).sum(), (hidden, weight))

    chunked = token_logps(hidden, weight, targets, chunk_tokens=chunk_tokens)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-6)
    chunked_grads = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    for got, want in zip(chunked_grads, grads, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_token_logps_under_bf16_autocast_match_within_bf16_tolerance():
    torch.manual_seed(2)
    hidden = torch.randn(40, 32, requires_grad=True)
    weight = (0.1 * torch.randn(300, 32)).requires_grad_()
    targets = torch.randint(0, 300, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = token_logps(hidden, weight, targets, chunk_tokens=None)
        chunked = token_logps(hidden, weight, targets, chunk_tokens=16)
    # The fp32 truth; both bf16 matmuls are within bf16 rounding of it.
    truth = token_logps(hidden, weight, targets, chunk_tokens=None)
    torch.testing.assert_close(chunked, truth, rtol=0, atol=2e-2)
    torch.testing.assert_close(chunked, plain, rtol=0, atol=2e-2)
    g_plain = torch.autograd.grad(plain.sum(), (hidden, weight))
    g_chunked = torch.autograd.grad(chunked.sum(), (hidden, weight))
    assert g_chunked[1].dtype == torch.float32  # fp32 master weights get fp32 gradients
    for got, want in zip(g_chunked, g_plain, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)


def test_token_logps_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"hidden \(N, H\) and targets \(N,\)"):
        token_logps(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_tokens must be at least 1"):
        token_logps(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long),
                    chunk_tokens=0)


# --- packing -------------------------------------------------------------------------------


def test_packing_drops_every_pad_and_restarts_positions():
    batch = preference_batch(pairs=3)
    packed = pack_pairs(batch, padding_free=True, pad_token_id=0)
    lengths = torch.cat([batch["chosen_attention_mask"].sum(1),
                         batch["rejected_attention_mask"].sum(1)])
    assert packed.input_ids.shape == (1, int(lengths.sum()))
    assert packed.attention_mask is None
    assert packed.cu_seqlens.tolist() == [0, *torch.cumsum(lengths, 0).tolist()]
    starts = packed.position_ids[0] == 0
    assert starts.sum() == 6 and packed.max_length == int(lengths.max())
    completion_tokens = int((batch["chosen_labels"] != -100).sum()
                            + (batch["rejected_labels"] != -100).sum())
    assert len(packed.targets) == completion_tokens
    assert torch.equal(packed.input_ids.view(-1)[packed.index + 1], packed.targets)
    assert packed.sequence.tolist() == sorted(packed.sequence.tolist())


# --- the model call ------------------------------------------------------------------------


@pytest.mark.parametrize(("padding_free", "chunk_tokens"), [
    (False, None), (False, 5), (True, None), (True, 5),
])
def test_completion_logps_equal_trl_in_values_and_gradients(padding_free, chunk_tokens):
    model = tiny_llama()
    batch = preference_batch(pairs=3)
    want = trl_logps(model, batch)
    want_grads = gradients(model, *want)

    got = completion_logps(model, batch, padding_free=padding_free, chunk_tokens=chunk_tokens,
                           pad_token_id=0)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (3,)
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    got_grads = gradients(model, *got)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The model's own output layer is back in place afterwards.
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)


def test_varlen_attention_on_packed_pairs_equals_padded_sdpa(monkeypatch):
    batch = preference_batch(pairs=4, seed=3)
    want = trl_logps(tiny_llama("sdpa"), batch)
    model = tiny_llama(register_varlen_attention())
    # On a CPU, varlen attention is one causal sdpa call per sequence and layer: count them.
    sdpa, calls = torch.nn.functional.scaled_dot_product_attention, []

    def counted(query, *args, **kwargs):
        calls.append((query.shape[2], kwargs.get("is_causal")))
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    got = completion_logps(model, batch, padding_free=True, chunk_tokens=8, pad_token_id=0)
    monkeypatch.undo()
    lengths = torch.cat([batch["chosen_attention_mask"].sum(1),
                         batch["rejected_attention_mask"].sum(1)]).tolist()
    assert calls == [(n, True) for n in lengths] * 2  # 8 sequences, 2 layers
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    # A padded batch through the same model takes the masked sdpa route.
    padded = completion_logps(model, batch, padding_free=False, chunk_tokens=8, pad_token_id=0)
    for g, w in zip(padded, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def _attend_per_sequence(q, k, v, cu, causal_kwargs):
    """The reference: causal sdpa per sequence, on (T, heads, D) tensors."""
    bounds = cu.tolist()
    return torch.cat([
        torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
            is_causal=True, **causal_kwargs,
        ).transpose(0, 1)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ])


@pytest.mark.parametrize("api", ["2.10", "2.15"])
def test_flash_varlen_adapts_to_the_pytorch_api_it_finds(monkeypatch, api):
    """PyTorch's `varlen_attn` is CUDA-only and its signature changed (2.10: is_causal, no
    scale, no GQA; 2.11+: window_size, scale, enable_gqa). A CPU stand-in with each
    signature (a mock, as no CUDA kernel runs here) checks the arguments we build."""
    import torch.nn.attention.varlen as varlen

    from spa_core.training import fast

    calls = []
    if api == "2.10":
        def fake(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False):
            calls.append({"is_causal": is_causal, "heads": (query.shape[1], key.shape[1])})
            assert is_causal and query.shape[1] == key.shape[1]
            return _attend_per_sequence(query, key, value, cu_seq_q, {})
    else:
        def fake(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None,
                 window_size=(-1, -1), enable_gqa=False):
            calls.append({"window_size": window_size, "enable_gqa": enable_gqa})
            assert window_size == (-1, 0)
            return _attend_per_sequence(query, key, value, cu_seq_q,
                                        {"scale": scale, "enable_gqa": enable_gqa})
    monkeypatch.setattr(varlen, "varlen_attn", fake)
    fast._varlen_parameters.cache_clear()
    monkeypatch.setitem(fast._FLASH_VARLEN, "usable", True)
    try:
        torch.manual_seed(5)
        q, k, v = torch.randn(11, 4, 8), torch.randn(11, 2, 8), torch.randn(11, 2, 8)
        cu = torch.tensor([0, 4, 11], dtype=torch.int32)
        want = _attend_per_sequence(q, k, v, cu, {"enable_gqa": True})
        got = fast._flash_varlen(q, k, v, cu, 7, None)
        torch.testing.assert_close(got, want)
        assert len(calls) == 1
        # A non-default scale: passed where the API takes one, else no flash at all.
        scaled = fast._flash_varlen(q, k, v, cu, 7, 0.5)
        if api == "2.10":
            assert scaled is None and len(calls) == 1
        else:
            torch.testing.assert_close(
                scaled, _attend_per_sequence(q, k, v, cu, {"scale": 0.5, "enable_gqa": True}))
    finally:
        fast._varlen_parameters.cache_clear()


def test_models_with_transformed_logits_are_refused():
    assert fast_logps_unsupported(tiny_llama()) is None
    capped = tiny_llama()
    capped.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping=30.0" in fast_logps_unsupported(capped)


def relative_errors(grads: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: ((grads[name] - t).norm() / t.norm()).item() for name, t in truth.items()}


def check_packed_bf16_against_trl(device: str) -> None:
    """Under bf16 autocast (an fp32 model, as `spa train` loads it), the packed path (varlen
    attention, chunked head) is as close to the fp32 computation as TRL's own bf16 padded
    computation is: in values, and in every parameter's gradient (relative L2 error at most
    1.5x TRL's, plus 1e-3). A fixed tolerance would not do: bf16 moves the largest gradient
    entries by more than 5 % in both. Attention that leaked across or ahead of a sequence
    gives errors of tens of percent."""
    batch = {k: v.to(device) for k, v in preference_batch(pairs=8, seed=4).items()}
    exact = tiny_llama("sdpa").to(device)
    truth = trl_logps(exact, batch)
    truth_grads = gradients(exact, *truth)
    reference = tiny_llama("sdpa").to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        trl = trl_logps(reference, batch)
    trl_grads = gradients(reference, *trl)
    model = tiny_llama(register_varlen_attention()).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        ours = completion_logps(model, batch, padding_free=True, chunk_tokens=16, pad_token_id=0)
    ours_grads = gradients(model, *ours)
    for got, theirs, exact_logps in zip(ours, trl, truth, strict=True):
        ours_error = (got - exact_logps).abs().max().item()
        assert ours_error <= 1.5 * (theirs - exact_logps).abs().max().item() + 1e-3, ours_error
    trl_error, ours_error = relative_errors(trl_grads, truth_grads), relative_errors(ours_grads, truth_grads)
    for name in truth_grads:
        assert ours_error[name] <= 1.5 * trl_error[name] + 1e-3, (name, ours_error[name],
                                                                 trl_error[name])


def test_packed_path_under_bf16_autocast_is_as_close_to_fp32_as_trl():
    """On a CPU: one bf16 sdpa call per sequence (the GPU test below: the flash kernel)."""
    check_packed_bf16_against_trl("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_flash_varlen_and_chunks_are_as_close_to_fp32_as_trl(monkeypatch):
    """bf16 autocast on CUDA: PyTorch's flash varlen kernel runs every layer, in bf16 (an
    fp32 model's query is fp32 under autocast: the rotary embedding promotes it), and the
    result is as close to fp32 as TRL's padded sdpa computation."""
    import torch.nn.attention.varlen as varlen_module

    from spa_core.training import fast

    kernel, calls = varlen_module.varlen_attn, []

    @functools.wraps(kernel)  # the signature `_flash_varlen` reads
    def counted(q, *args, **kwargs):
        calls.append(q.dtype)
        return kernel(q, *args, **kwargs)

    monkeypatch.setattr(varlen_module, "varlen_attn", counted)
    check_packed_bf16_against_trl("cuda")
    assert fast._FLASH_VARLEN["usable"], "PyTorch's varlen kernel failed on this GPU"
    # One call per layer of the packed forward pass (the backward pass is the op's own).
    assert calls == [torch.bfloat16] * tiny_llama().config.num_hidden_layers, calls
