"""Decoding steps for sampling: the model's own forward, or a lean path for Llama-family models.

Both backends share one protocol: `start(ids, attn, n)` runs the prompts (each prompt once, its KV
cache then copied to its n samples) and returns the logits of the first response token of every
row [G*n, V]; `step(tok)` feeds one token per row and returns the next logits [rows, V];
`select(keep)` drops finished rows from the cache.

`ModelSteps` calls the Hugging Face forward with a DynamicCache: any causal LM.

`LeanSteps` computes the same functions for Qwen2 / Llama / Mistral (full attention, SiLU MLP,
RMSNorm, rotary embeddings of a fixed table) straight from the model's weights: no per-token
mask building or module dispatch, a KV cache written in place (DynamicCache concatenates the whole
cache at every token), one matrix product for q, k and v and one for the MLP's gate and up
projections. To fuse those without a second copy of the weights, the q/k/v (gate/up) weights of
the engine's model are re-pointed into one buffer (`fuse_weights`): the model computes what it
computed before, and `sync_weights` writes through into the fused buffer. The results equal the
model's forward up to float rounding (tests/rollout/test_rollout.py checks log-probs against a plain
forward pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

LEAN_TYPES = ("qwen2", "llama", "mistral")
CHUNK = 16  # KV cache columns added at a time


def lean_supported(model: torch.nn.Module) -> bool:
    """The architectures whose forward LeanSteps reproduces exactly."""
    c = model.config
    inner = getattr(model, "model", None)
    rope = (getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}).get(
        "rope_type", "default"
    )
    return (
        c.model_type in LEAN_TYPES
        and getattr(c, "hidden_act", "") == "silu"
        and inner is not None
        and hasattr(inner, "rotary_emb")
        and rope not in ("dynamic", "longrope")
        and set(getattr(c, "layer_types", None) or ["full_attention"]) == {"full_attention"}
        and not getattr(c, "use_sliding_window", False)
        and not getattr(c, "mlp_bias", False)
    )


def _fuse(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One [sum(out), in] weight (and bias) with each Linear's parameters re-pointed at its rows."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    has_bias = any(lin.bias is not None for lin in linears)
    bias = (
        torch.cat(
            [
                lin.bias.detach() if lin.bias is not None else weight.new_zeros(lin.out_features)
                for lin in linears
            ]
        )
        if has_bias
        else None
    )
    start = 0
    for lin in linears:
        end = start + lin.out_features
        lin.weight = torch.nn.Parameter(weight[start:end], requires_grad=False)
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(bias[start:end], requires_grad=False)
        start = end
    return weight, bias


def fuse_weights(model: torch.nn.Module) -> list[tuple]:
    """Per layer: (qkv weight, qkv bias, gate-up weight), fused in place (see module docstring)."""
    out = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        w_qkv, b_qkv = _fuse([a.q_proj, a.k_proj, a.v_proj])
        w_gu, _ = _fuse([m.gate_proj, m.up_proj])
        out.append((w_qkv, b_qkv, w_gu))
    return out


def _rms(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    # Qwen2RMSNorm / LlamaRMSNorm (computed in fp32, scaled in the model's dtype); in fp32 the fused
    # kernel gives the same bits as the module's four ops, in one call
    if x.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _linear(lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, lin.weight, lin.bias)  # the module's own function, without module dispatch


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    # the model's x * cos + rotate_half(x) * sin, bit for bit: rotate_half(x) = [-x2, x1] and
    # roll(x) = [x2, x1], the sign moved into signed_sin = [-sin1, sin2] (negation is exact)
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class LeanSteps:
    def __init__(self, model: torch.nn.Module, fused: list[tuple], max_len: int):
        c = model.config
        self.model, self.fused, self.inner = model, fused, model.model
        self.heads = c.num_attention_heads
        self.kv_heads = c.num_key_value_heads or c.num_attention_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.scale = self.head_dim**-0.5
        probe = self.inner.embed_tokens.weight
        cos, sin = self.inner.rotary_emb(
            probe[:1, None], torch.arange(max_len, device=probe.device)[None]
        )
        half = self.head_dim // 2
        # [max_len, D] rotary tables (with the rope type's scaling); sin with the sign of
        # rotate_half
        self.cos, self.sin = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

    @torch.inference_mode()
    def start(self, ids: torch.Tensor, attn: torch.Tensor, n: int) -> torch.Tensor:
        """ids, attn [G, P] left-padded prompts -> first-token logits [G*n, V]."""
        g, plen = ids.shape
        dev, hq, hk, d = ids.device, self.heads, self.kv_heads, self.head_dim
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [G, 1, P, D]
        causal = torch.ones(plen, plen, dtype=torch.bool, device=dev).tril()
        # pad queries see themselves only (their outputs are never used): no row is all -inf
        mask = (causal & attn[:, None, :].bool()) | torch.eye(plen, dtype=torch.bool, device=dev)
        x = self.inner.embed_tokens(ids)
        self.len, self.cap = plen, plen + CHUNK
        # per layer [rows * KV heads, cap, D]
        self.k = [x.new_zeros(g * n * hk, self.cap, d) for _ in self.fused]
        self.v = [x.new_zeros(g * n * hk, self.cap, d) for _ in self.fused]
        for i, (layer, (w_qkv, b_qkv, w_gu)) in enumerate(zip(self.inner.layers, self.fused)):
            qkv = (
                F.linear(_rms(x, layer.input_layernorm), w_qkv, b_qkv)
                .view(g, plen, hq + 2 * hk, d)
                .transpose(1, 2)
            )
            q, k, v = qkv[:, :hq], qkv[:, hq : hq + hk], qkv[:, hq + hk :]
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.k[i][:, :plen] = k.repeat_interleave(n, 0).reshape(g * n * hk, plen, d)
            self.v[i][:, :plen] = v.repeat_interleave(n, 0).reshape(g * n * hk, plen, d)
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask[:, None], scale=self.scale, enable_gqa=hq != hk
            )
            x = x + _linear(layer.self_attn.o_proj, o.transpose(1, 2).reshape(g, plen, hq * d))
            x = x + self._mlp(layer, w_gu, x)
        # additive attention mask over the cache: -inf on prompt padding and on columns not written
        # yet
        self.bias = torch.full((g * n, self.cap), float("-inf"), device=dev, dtype=x.dtype)
        self.bias[:, :plen].masked_fill_(attn.repeat_interleave(n, 0) == 1, 0.0)
        self.pos = attn.sum(-1).repeat_interleave(n, 0)  # [rows] position of the next token
        return self._logits(x[:, -1]).repeat_interleave(n, 0)

    @torch.inference_mode()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """tok [rows] -> next logits [rows, V]. Attention runs over every cache column (unwritten
        ones masked): a contiguous cache is several times faster to multiply than a slice of it."""
        if self.len == self.cap:
            self._grow()
        rows, t = tok.shape[0], self.len
        hq, hk, d = self.heads, self.kv_heads, self.head_dim
        cos, sin = self.cos[self.pos][:, None], self.sin[self.pos][:, None]  # [rows, 1, D]
        self.bias[:, t] = 0.0
        g = hq // hk  # query heads per KV head
        bias = (
            self.bias[:, None, None].expand(rows, hk, g, self.cap).reshape(rows * hk, g, self.cap)
        )
        x = self.inner.embed_tokens(tok)
        for i, (layer, (w_qkv, b_qkv, w_gu)) in enumerate(zip(self.inner.layers, self.fused)):
            qkv = F.linear(_rms(x, layer.input_layernorm), w_qkv, b_qkv).view(rows, hq + 2 * hk, d)
            qk = _rotate(qkv[:, : hq + hk], cos, sin)
            self.k[i].view(rows, hk, self.cap, d)[:, :, t] = qk[:, hq:]
            self.v[i].view(rows, hk, self.cap, d)[:, :, t] = qkv[:, hq + hk :]
            s = torch.baddbmm(
                bias,
                qk[:, :hq].reshape(rows * hk, g, d),
                self.k[i].transpose(1, 2),
                alpha=self.scale,
            )
            # softmax in fp32, as the model's eager attention
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(x.dtype)
            o = torch.bmm(p, self.v[i])  # [rows * hk, g, d]
            x = x + _linear(layer.self_attn.o_proj, o.view(rows, hq * d))
            x = x + self._mlp(layer, w_gu, x)
        self.len, self.pos = t + 1, self.pos + 1
        return self._logits(x)

    def select(self, keep: torch.Tensor) -> None:
        hk = self.kv_heads
        # the cache rows of the kept rows
        idx = (keep[:, None] * hk + torch.arange(hk, device=keep.device)).flatten()
        self.k, self.v = [k[idx] for k in self.k], [v[idx] for v in self.v]
        self.bias, self.pos = self.bias[keep], self.pos[keep]

    def _grow(self) -> None:
        """More cache columns, by a quarter of the cache (at least CHUNK): each column is copied
        O(1) times on average."""
        extra = max(CHUNK, self.cap // 4)
        self.k = [torch.cat([k, k.new_zeros(k.shape[0], extra, k.shape[2])], dim=1) for k in self.k]
        self.v = [torch.cat([v, v.new_zeros(v.shape[0], extra, v.shape[2])], dim=1) for v in self.v]
        self.bias = torch.cat(
            [self.bias, self.bias.new_full((self.bias.shape[0], extra), float("-inf"))], dim=1
        )
        self.cap += extra

    def _mlp(self, layer: torch.nn.Module, w_gu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(_rms(x, layer.post_attention_layernorm), w_gu).chunk(2, dim=-1)
        return _linear(layer.mlp.down_proj, F.silu(gate) * up)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(self.model.lm_head, _rms(x, self.inner.norm))


class ModelSteps:
    """The model's forward with a DynamicCache (any causal LM)."""

    def __init__(self, model: torch.nn.Module):
        from skyexp.model.loading import cache_kwarg

        self.model, self.cache_arg = model, cache_kwarg(model)

    @torch.inference_mode()
    def start(self, ids: torch.Tensor, attn: torch.Tensor, n: int) -> torch.Tensor:
        self.cache = DynamicCache(config=self.model.config)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: self.cache},
        )
        self.cache.batch_repeat_interleave(n)
        self.attn = attn.repeat_interleave(n, 0)
        self.pos = self.attn.sum(-1, keepdim=True)
        return out.logits[:, -1].repeat_interleave(n, 0)

    @torch.inference_mode()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        self.attn = torch.cat([self.attn, self.attn.new_ones(self.attn.shape[0], 1)], dim=1)
        out = self.model(
            input_ids=tok[:, None],
            attention_mask=self.attn,
            position_ids=self.pos,
            use_cache=True,
            **{self.cache_arg: self.cache},
        )
        self.pos = self.pos + 1
        return out.logits[:, -1]

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.attn, self.pos = self.attn[keep], self.pos[keep]
