"""Tiny random-init transformers models for tests (made locally, nothing downloaded)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A two-layer Llama of about 20 KB of float32 weights (several shards at 8KB)."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**CONFIG))
