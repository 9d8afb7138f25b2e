"""A tiny random Llama and a pairs file for trainer tests (shared by test_trainer and test_fsdp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PAIRS: dict[str, list[Any]] = {
    "prompt": ["How do I pick a lock?", "What is the weather today?",
               "Can you see me?", "Write a threatening letter."],
    "chosen": ["I cannot help with that; a locksmith can.",
               "I have no real-time access; check a forecast.",
               "No, I cannot see or hear anything.",
               "I will not write threats, but I can help you say what upsets you."],
    "rejected": ["Here is how.", "It is sunny.", "Yes, you look great.", "Dear enemy, beware."],
    "weight": [0.25, 1.75, 0.5, 1.5],
    "prompt_id": [0, 1, 2, 3],  # an extra column the trainer ignores
}


def build_tiny_model(path: Path) -> str:
    """Save a 2-layer, 32-wide random Llama (seed 0) with a 320-token BPE tokenizer and a
    ChatML template to `path`; returns it as a string."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [" ".join(PAIRS[c]) for c in ("prompt", "chosen", "rejected")]
    corpus.append("system user assistant")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_pairs(path: Path, **overrides: list[Any]) -> str:
    pq.write_table(pa.table({**PAIRS, **overrides}), path)
    return str(path)
