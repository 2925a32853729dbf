"""The blocks' public ``attn_mask``: a hidden key is as if it were absent; bool and additive masks agree."""

from __future__ import annotations

import pytest
import torch

from model.layers.attention import Block, CombinerBlock
from model.layers.rpe import rpe_buckets


def _key_bias(valid: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool -> ``[B, 1, 1, L]`` additive bias (0 = attend, -inf = hidden)."""
    return torch.zeros(valid.shape, dtype=torch.float64).masked_fill(~valid, float("-inf"))[:, None, None]


@pytest.mark.parametrize("rpe", [False, True])
def test_hidden_keys_are_as_if_absent(rpe: bool) -> None:
    torch.manual_seed(0)
    block = Block(16, 2, 2.0, eps=1e-6, rpe=rpe).double()
    if rpe:
        torch.nn.init.normal_(block.attn.rpe_table)  # zeros at init would make the RPE term a no-op
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    buckets = rpe_buckets(2, 1) if rpe else None  # 1 + 2x2 tokens
    valid = torch.tensor([[True, True, True, False, True], [True, True, True, True, True]])
    with torch.no_grad():
        masked = block(x, buckets, attn_mask=_key_bias(valid))
        kept = [0, 1, 2, 4]
        alone = block(x[:1, kept], None if buckets is None else buckets[kept][:, kept])
        unmasked = block(x, buckets)
        as_bool = block(x, buckets, attn_mask=valid[:, None, None])
    assert torch.allclose(masked[:1, kept], alone, atol=1e-12)
    assert torch.equal(masked[1], unmasked[1])  # nothing hidden in sample 1: the mask adds exact zeros
    assert (masked[0, kept] - unmasked[0, kept]).abs().max() > 1e-6  # the hidden key mattered
    assert torch.equal(as_bool, masked)


def test_combiner_per_sample_queries_match_shared_ones() -> None:
    torch.manual_seed(0)
    combiner = CombinerBlock(16, 2, 2.0, eps=1e-6).double()
    torch.nn.init.normal_(combiner.attn.rpe_table)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    query_pos = torch.randn(5, 16, dtype=torch.float64)
    buckets = rpe_buckets(2, 1)
    with torch.no_grad():
        shared = combiner(x, query_pos, buckets)
        per_sample = combiner(x, query_pos.expand(3, -1, -1), buckets.expand(3, -1, -1),
                              attn_mask=torch.zeros(3, 1, 1, 5, dtype=torch.float64))
    assert torch.allclose(per_sample, shared, atol=1e-12)


def test_flash_layout_bug_refuses_a_mask() -> None:
    block = Block(16, 2, 2.0, eps=1e-6, flash_layout_bug=True)
    x = torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="flash_layout_bug"):
        block(x, attn_mask=torch.zeros(1, 1, 1, 4))
