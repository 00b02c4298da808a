"""The feed-forward block and the Hugging-Face-named encoder layer BERT (post-norm) and
ViT (pre-norm) share: `intermediate`, `output`, `attention/{self|attention}`, whose names
are those families' parameter paths."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from pjx.nn.attention import Attention
from pjx.nn.config import ACTIVATIONS, GATED, MLP_AXES, LayerConfig, constrain
from pjx.nn.dense import Norm, dense


def mlp_in(cfg: LayerConfig, x_BxLxD, names: Sequence[str]):
    """x -> act(x W_in) [B,L,F] (gated: act(x W_0) * (x W_1)); projections become children of the
    calling module (call inside a compact method)."""
    axes = ("embed", "mlp")
    if cfg.activation in GATED:
        if len(names) != 2:
            raise ValueError(f"gated activation {cfg.activation} needs two names, got {names}")
        act = ACTIVATIONS[GATED[cfg.activation]]
        gate = dense(cfg, cfg.mlp_dim, axes, name=names[0])(x_BxLxD)
        h_BxLxF = act(gate) * dense(cfg, cfg.mlp_dim, axes, name=names[1])(x_BxLxD)
    else:
        h_BxLxF = ACTIVATIONS[cfg.activation](dense(cfg, cfg.mlp_dim, axes, name=names[0])(x_BxLxD))
    return constrain(h_BxLxF, MLP_AXES)


class MLP(nn.Module):
    """Feed-forward D -> F -> D in one scope (GPT-2 `mlp/c_fc,c_proj`; T5 `wi_0,wi_1,wo`)."""

    config: LayerConfig
    in_names: tuple[str, ...] = ("wi",)
    out_name: str = "wo"
    hidden_dropout: bool = False  # T5 drops out the hidden activation; GPT-2 does not

    @nn.compact
    def __call__(self, x_BxLxD, *, deterministic=True):
        cfg = self.config
        h_BxLxF = mlp_in(cfg, x_BxLxD, self.in_names)
        if self.hidden_dropout:
            h_BxLxF = nn.Dropout(cfg.dropout_rate)(h_BxLxF, deterministic=deterministic)
        return dense(cfg, cfg.hidden_size, ("mlp", "embed"), name=self.out_name)(h_BxLxF)


class Intermediate(nn.Module):
    """HF `intermediate`: `dense` D -> F plus activation (BERT, ViT)."""

    config: LayerConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        names = ("dense", "dense_gate") if self.config.activation in GATED else ("dense",)
        return mlp_in(self.config, x_BxLxD, names)


class Output(nn.Module):
    """HF `output`: `dense` back to D, dropout, residual, and `LayerNorm` when post-norm.

    Contracts the last `contract` dims: 1 for [B,L,F], 2 for an attention context [B,L,H,K].
    """

    config: LayerConfig
    contract: int = 1

    @nn.compact
    def __call__(self, h, residual_BxLxD, *, deterministic=True):
        cfg = self.config
        if self.contract == 2:
            proj = dense(
                cfg, cfg.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), name="dense"
            )
        else:
            proj = dense(cfg, cfg.hidden_size, ("mlp", "embed"), name="dense")
        y = nn.Dropout(cfg.dropout_rate)(proj(h), deterministic=deterministic)
        y = y + residual_BxLxD
        if cfg.norm_position == "post":
            y = Norm(cfg, name="LayerNorm")(y)
        return y


class EncoderAttention(nn.Module):
    """HF `attention`: `{attention_name}/query,key,value`, `output/dense` [, `output/LayerNorm`]."""

    config: LayerConfig
    attention_name: str = "self"

    @nn.compact
    def __call__(self, h_BxLxD, residual_BxLxD, *, mask=None, bias=None, deterministic=True):
        ctx = Attention(self.config, name=self.attention_name)(
            h_BxLxD, mask=mask, bias=bias, deterministic=deterministic
        )
        return Output(self.config, contract=2, name="output")(
            ctx, residual_BxLxD, deterministic=deterministic
        )


class EncoderLayer(nn.Module):
    """HF-style encoder layer shared by BERT (post-norm) and ViT (pre-norm).

    post (Vaswani et al. 2017): x = LN(x + Attn(x)); x = LN(x + FFN(x)).
    pre (Xiong et al. 2020; ViT): x = x + Attn(LN(x)); x = x + FFN(LN(x)).
    Paths: attention/{attention_name}/{query,key,value}, attention/output/dense[, LayerNorm],
    intermediate/dense, output/dense[, LayerNorm]; pre-norm adds layernorm_before/_after.
    """

    config: LayerConfig
    attention_name: str = "self"

    @nn.compact
    def __call__(self, x_BxLxD, mask=None, bias=None, deterministic=True):
        cfg = self.config
        pre = cfg.norm_position == "pre"
        h = Norm(cfg, name="layernorm_before")(x_BxLxD) if pre else x_BxLxD
        x_BxLxD = EncoderAttention(cfg, self.attention_name, name="attention")(
            h, x_BxLxD, mask=mask, bias=bias, deterministic=deterministic
        )
        h = Norm(cfg, name="layernorm_after")(x_BxLxD) if pre else x_BxLxD
        h_BxLxF = Intermediate(cfg, name="intermediate")(h)
        x_BxLxD = Output(cfg, name="output")(h_BxLxF, x_BxLxD, deterministic=deterministic)
        return constrain(x_BxLxD)
