"""The last block's attention for the prefix queries only, when that block is the target block.

With the target in the last block and a token-pooling head, each masked copy needs one thing from
attention: what its prefix queries (the same in every copy of an image) read from keys and values
that are linear in the kernel weights, k_j = w_j K_j + b_k and v_j = w_j V_j + b_v. So

    q.k_j = w_j (q.K_j) + q.b_k         and         sum_j a_j v_j = sum_j a_j w_j V_j + (sum_j a_j) b_v,

and the products q.K_j are computed once per image. A masked copy then costs a gather of at most
nine scores and values, a softmax over prefix + 9 + 1 logits, and a weighted sum: no projection.
It needs keys without a per-token normalisation (``k_norm`` is the identity, as in most ViTs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import Attention
from torch import Tensor, nn


def linear_keys(attn: Attention) -> bool:
    return isinstance(attn.k_norm, nn.Identity)


@dataclass
class PrefixAttentionState:
    logits: Tensor  # (B, N, H, P) q.K_j * scale for every key token j, K without bias
    logit_bias: Tensor  # (B, H, P, 1) q.b_k * scale
    prefix_values: Tensor  # (B, H, P, hd) the prefix tokens' own values, bias included
    values: Tensor  # (B, N, H, hd) V without bias
    value_bias: Tensor  # (H, hd)


def prepare(attn: Attention, projected: Tensor, prefix: int) -> PrefixAttentionState:
    """Per-image products from the unbiased q/k/v projection (B, N, 3A) of the unmasked tokens."""
    batch, tokens, _ = projected.shape
    heads, head_dim, width = attn.num_heads, attn.head_dim, attn.attn_dim
    bias = attn.qkv.bias if attn.qkv.bias is not None else projected.new_zeros(3 * width)
    bias = bias.to(projected.dtype)
    q, k, v = projected.split(width, dim=-1)
    q_bias, k_bias, v_bias = bias.split(width)
    query = (q[:, :prefix] + q_bias).view(batch, prefix, heads, head_dim).transpose(1, 2)
    query = attn.q_norm(query) * attn.scale
    keys = k.view(batch, tokens, heads, head_dim)
    values = v.view(batch, tokens, heads, head_dim)
    logits = torch.einsum("bhpd,bnhd->bnhp", query, keys)
    logit_bias = torch.einsum("bhpd,hd->bhp", query, k_bias.view(heads, head_dim)).unsqueeze(-1)
    prefix_values = (values[:, :prefix] + v_bias.view(heads, head_dim)).transpose(1, 2)
    return PrefixAttentionState(logits, logit_bias, prefix_values, values, v_bias.view(heads, head_dim))


def attend_prefix(
    attn: Attention,
    state: PrefixAttentionState,
    image: Tensor,
    index: Tensor,
    weight: Tensor,
    key_bias: Tensor,
    prefix: int,
) -> Tensor:
    """Attention output (n, P, D) of the prefix queries of masked copies.

    ``index``/``weight`` (n, S) are each copy's window tokens (full-sequence positions) and kernel
    weights; ``key_bias`` (n, P + S + 1) the log multiplicities of [prefix | window | zero token].
    """
    n = image.shape[0]
    bias = state.logit_bias[image]  # (n, H, P, 1)
    weight = weight.to(bias.dtype)
    on_prefix_keys = state.logits[image, :prefix].permute(0, 2, 3, 1)  # (n, H, P, P)
    on_window_keys = state.logits[image[:, None], index].permute(0, 2, 3, 1)  # (n, H, P, S)
    window = on_window_keys * weight[:, None, None, :] + bias
    scores = torch.cat([on_prefix_keys + bias, window, bias], dim=-1) + key_bias[:, None, None, :]
    probabilities = scores.float().softmax(dim=-1).to(bias.dtype)
    on_prefix, on_window = probabilities[..., :prefix], probabilities[..., prefix:-1]
    window_values = state.values[image[:, None], index]  # (n, S, H, hd)
    out = torch.einsum("nhpq,nhqd->nhpd", on_prefix, state.prefix_values[image])
    out = out + torch.einsum("nhps,nshd->nhpd", on_window * weight[:, None, None, :], window_values)
    out = out + (1.0 - on_prefix.sum(-1, keepdim=True)) * state.value_bias[None, :, None, :]
    out = out.transpose(1, 2).reshape(n, prefix, attn.attn_dim)
    return attn.proj(attn.norm(out))
