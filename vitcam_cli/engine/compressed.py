"""The exact fast path: each masked copy as prefix tokens, its window tokens and one zero token.

In a masked copy every patch token outside the 3x3 window is exactly zero. Standard timm blocks
(LayerNorm, attention without positional terms, MLP, LayerScale) treat tokens alike, so those zero
tokens stay identical to each other through every later block: one representative with
multiplicity m stands for all of them. Attention over the short sequence is exact when the
representative's key gets the additive logit bias log(m) (a softmax over m identical keys equals
one key with weight m); average pooling weights it by m; an attention-pool head (SigLIP's latent
query, timm's ``global_pool='map'``) attends over the short sequence with the same bias; token
pooling needs only the prefix queries of the last block.

Three more savings, all exact: the target block's q/k/v are linear in the masked tokens, so they
come from one projection of the unmasked tokens per image, scaled per window; with skip ``input``
(where the copies must stay full length after the target block) the target block's attention still
runs on the short sequence and is broadcast back; and the last block computes queries, attention
output and MLP for the prefix tokens only when the head reads only those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention, AttentionPoolLatent
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from vitcam_cli.engine.base import MaskedEngine
from vitcam_cli.engine.geometry import TokenLayout, Trace
from vitcam_cli.engine.masks import window_slots
from vitcam_cli.engine.prefix_attention import PrefixAttentionState, attend_prefix, linear_keys
from vitcam_cli.engine.prefix_attention import prepare as prepare_prefix_attention

POOLS = ("token", "avg", "max", "avgmax", "map")


def _pool_unsupported_reason(model: VisionTransformer) -> str | None:
    """Why the head's pooling has no exact compressed form, or None when it has."""
    pool = getattr(model, "attn_pool", None)
    if model.global_pool not in POOLS or (pool is None) == (model.global_pool == "map"):
        return f"its head pools with {model.global_pool!r}; the fast path supports {', '.join(POOLS)}"
    if pool is not None and (type(pool) is not AttentionPoolLatent or pool.pos_embed is not None):
        return f"its {type(pool).__name__} attention pool has positional terms or is not timm's latent pool"
    if pool is not None and type(model).forward_head is not VisionTransformer.forward_head:
        return f"{type(model).__name__} has a head of its own after its attention pool"
    return None


def fast_unsupported_reason(model: nn.Module, block_index: int) -> str | None:
    """Why the compressed path would not be exact for this model, or None when it is."""
    if not isinstance(model, VisionTransformer):
        return f"{type(model).__name__} is not a timm VisionTransformer (positional terms inside its blocks)"
    reason = _pool_unsupported_reason(model)
    if reason is not None:
        return reason
    for block in list(model.blocks)[block_index:]:
        if type(block) is not Block:
            return f"its {type(block).__name__} blocks are not standard timm Blocks"
        if type(block.attn) is not Attention or block.attn.gate is not None:
            return f"its {type(block.attn).__name__} attention is not timm's standard Attention"
    return None


def _heads(attn: Attention, t: Tensor) -> Tensor:
    """(n, L, heads*head_dim) -> (n, heads, L, head_dim)."""
    n, length, _ = t.shape
    return t.view(n, length, attn.num_heads, attn.head_dim).transpose(1, 2)


def attend(attn: Attention, q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None) -> Tensor:
    """timm Attention from projected q, k, v (n, L, A) with an additive per-key bias (n, Lk)."""
    q, k = attn.q_norm(_heads(attn, q)), attn.k_norm(_heads(attn, k))
    mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, _heads(attn, v), attn_mask=mask)
    out = out.transpose(1, 2).reshape(q.shape[0], -1, attn.attn_dim)
    return attn.proj(attn.norm(out))


def project_qkv(attn: Attention, x: Tensor, queries: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """q for the first ``queries`` tokens (all when None), k and v for every token."""
    width, weight, bias = attn.attn_dim, attn.qkv.weight, attn.qkv.bias
    if queries is None:
        return attn.qkv(x).split(width, dim=-1)
    q = F.linear(x[:, :queries], weight[:width], None if bias is None else bias[:width])
    k, v = F.linear(x, weight[width:], None if bias is None else bias[width:]).split(width, dim=-1)
    return q, k, v


def finish_block(block: Block, residual: Tensor, attended: Tensor) -> Tensor:
    """The rest of a timm Block after attention: residual add, LayerScale, MLP."""
    x = residual + block.drop_path1(block.ls1(attended))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def run_block(block: Block, x: Tensor, key_bias: Tensor | None, queries: int | None) -> Tensor:
    """A timm Block on ``x``; with ``queries`` only the first ``queries`` outputs are computed."""
    q, k, v = project_qkv(block.attn, block.norm1(x), queries)
    residual = x if queries is None else x[:, :queries]
    return finish_block(block, residual, attend(block.attn, q, k, v, key_bias))


@dataclass
class SlotTables:
    """Per-grid index tables of the compressed sequence [prefix | window slots | zero token]."""

    index: Tensor  # (K, S) patch index of each window slot
    weight: Tensor  # (K, S) kernel weight of each slot, 0 on padding
    key_bias: (
        Tensor  # (K, P + S + 1) log multiplicity of each slot (-inf on padding, log m on the zero token)
    )
    scatter: Tensor  # (K, S) token position of each slot in the full sequence (N for padding)


def slot_tables(layout: TokenLayout, kernel: str, device: torch.device) -> SlotTables:
    slots = window_slots(layout.grid, kernel, device)
    prefix = torch.ones(slots.index.shape[0], layout.num_prefix, device=device)
    multiplicity = torch.cat([prefix, slots.valid.float(), slots.zeros.float()[:, None]], dim=1)
    scatter = torch.where(slots.valid, slots.index + layout.num_prefix, layout.num_tokens)
    return SlotTables(slots.index, slots.weight, multiplicity.log(), scatter)


@dataclass
class BatchState:
    features: Tensor  # (B, N, D) the target block's LayerNorm output
    projected: Tensor  # (B, N, 3A) its q/k/v projection without bias
    prefix_attention: PrefixAttentionState | None  # per-image products for a last target block


class CompressedEngine(MaskedEngine):
    name = "fast"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        reason = fast_unsupported_reason(self.model, self.block_index)
        if reason is not None:
            raise ValueError(reason)
        self.tables = slot_tables(self.layout, self.kernel, self.device)
        self.blocks: list[Block] = list(self.model.blocks)
        self.token_pool = self.model.global_pool == "token"
        # with token pooling the head reads the prefix tokens only: the last block computes just those
        self.prefix_queries = self.layout.num_prefix if self.token_pool else None
        self.compressed = self.skip in ("ln", "masked-input")
        # target in the last block, head on the prefix: copies need the prefix queries' attention only
        target = self.blocks[self.block_index]
        self.prefix_only_target = (
            self.block_index == len(self.blocks) - 1 and self.token_pool and linear_keys(target.attn)
        )

    @property
    def sequence_length(self) -> int:
        if self.compressed:
            return int(self.tables.key_bias.shape[1])
        return self.layout.num_tokens

    def prepare(self, traced: Trace) -> BatchState:
        attn = self.blocks[self.block_index].attn
        features = self.blocks[self.block_index].norm1(traced.block_input)
        projected = F.linear(features, attn.qkv.weight)
        prefix = (
            prepare_prefix_attention(attn, projected, self.layout.num_prefix)
            if self.prefix_only_target
            else None
        )
        return BatchState(features, projected, prefix)

    def _slots(self, tokens: Tensor, image: Tensor, position: Tensor, bias: Tensor | None = None) -> Tensor:
        """[prefix | window tokens scaled by the kernel | zero token] of each copy, from per-image tokens.

        With ``bias``, the tokens are a projection without bias and each slot gets ``bias`` added, so
        the result is the projection of the masked tokens (zero tokens project to the bias alone).
        """
        prefix = self.layout.num_prefix
        index = self.tables.index[position] + prefix
        weight = self.tables.weight[position].unsqueeze(-1).to(tokens.dtype)
        zero = tokens.new_zeros(image.shape[0], 1, tokens.shape[-1])
        if bias is None:
            window = tokens[image[:, None], index] * weight
            return torch.cat([tokens[image, :prefix], window, zero], dim=1)
        bias = bias.to(tokens.dtype)
        window = torch.addcmul(bias, tokens[image[:, None], index], weight)
        return torch.cat([tokens[image, :prefix] + bias, window, zero + bias], dim=1)

    def chunk_logits(self, traced: Trace, state: BatchState, image: Tensor, position: Tensor) -> Tensor:
        target = self.blocks[self.block_index]
        attn = target.attn
        key_bias = self.tables.key_bias[position]
        last = self.block_index == len(self.blocks) - 1
        prefix = self.layout.num_prefix
        if state.prefix_attention is not None:
            # prefix tokens are never masked: all three skip paths carry them unchanged (LN output for ln)
            residual = (state.features if self.skip == "ln" else traced.block_input)[image, :prefix]
            window = self.tables.index[position] + prefix
            attended = attend_prefix(
                attn, state.prefix_attention, image, window, self.tables.weight[position], key_bias, prefix
            )
            return self.model.forward_head(self.model.norm(finish_block(target, residual, attended)))
        # q/k/v of the masked LayerNorm output: W(w*f) = w*(Wf); every zero token projects to the bias
        qkv = self._slots(state.projected, image, position, attn.qkv.bias)
        q, k, v = qkv.split(attn.attn_dim, dim=-1)

        if self.compressed:
            residual = self._slots(
                state.features if self.skip == "ln" else traced.block_input, image, position
            )
            queries = self.prefix_queries if last else None
            if queries is not None:
                q, residual = q[:, :queries], residual[:, :queries]
            x = finish_block(target, residual, attend(attn, q, k, v, key_bias))
            for i, block in enumerate(self.blocks[self.block_index + 1 :], start=self.block_index + 1):
                x = run_block(block, x, key_bias, self.prefix_queries if i == len(self.blocks) - 1 else None)
            return self._head(x, key_bias)

        # skip "input": the copies differ in every token after this block, so they return to full length
        attended = attend(attn, q, k, v, key_bias)
        full = self._broadcast(attended, position)
        x = traced.block_input[image]
        if last and self.prefix_queries is not None:
            x = finish_block(target, x[:, : self.prefix_queries], full[:, : self.prefix_queries])
        else:
            x = finish_block(target, x, full)
        for i, block in enumerate(self.blocks[self.block_index + 1 :], start=self.block_index + 1):
            x = run_block(block, x, None, self.prefix_queries if i == len(self.blocks) - 1 else None)
        return self.model.forward_head(self.model.norm(x))

    def _broadcast(self, attended: Tensor, position: Tensor) -> Tensor:
        """Short-sequence attention outputs back to all N tokens: zero tokens share the representative's."""
        prefix, tokens = self.layout.num_prefix, self.layout.num_tokens
        n, _, dim = attended.shape
        full = attended[:, -1:].expand(n, tokens + 1, dim).clone()
        full[:, :prefix] = attended[:, :prefix]
        scatter = self.tables.scatter[position].unsqueeze(-1).expand(-1, -1, dim)
        full.scatter_(1, scatter, attended[:, prefix:-1])
        return full[:, :tokens]

    def _head(self, x: Tensor, key_bias: Tensor) -> Tensor:
        """Outputs of compressed sequences: prefix tokens as they are, pooled patch tokens weighted by m."""
        if self.token_pool:
            return self.model.forward_head(self.model.norm(x))
        x = self.model.norm(x)
        start = 0 if self.model.pool_include_prefix else self.layout.num_prefix
        if self.model.attn_pool is not None:  # the latent query attends over the short sequence
            bias = key_bias[:, None, None, start:].to(x.dtype)
            pooled = self.model.attn_pool(x[:, start:], attn_mask=bias)
            return self.model.head(self.model.head_drop(self.model.fc_norm(pooled)))
        tokens, log_m = x[:, start:].float(), key_bias[:, start:, None]
        multiplicity = log_m.exp()
        mean = (tokens * multiplicity).sum(1) / multiplicity.sum(1)
        peak = tokens.masked_fill(torch.isinf(log_m), float("-inf")).amax(1)
        pooled = {"avg": mean, "max": peak, "avgmax": 0.5 * (mean + peak)}[self.model.global_pool]
        # the model's own head on P+1 copies of the pooled token pools it back to itself
        copies = pooled.to(x.dtype)[:, None].expand(-1, self.layout.num_prefix + 1, -1)
        return self.model.forward_head(copies)
