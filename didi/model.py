"""The DiT denoiser (docs/method.md section 1), in the style of MDLM's `models/dit.py` (kuleshov-group/mdlm).

A bidirectional transformer over token ids: token embedding -> N blocks (rotary q/k, adaLN-zero modulation from a
timestep embedding of sigma, GELU-tanh MLP) -> adaLN final layer with its own (untied) output projection.
Attention is torch's `scaled_dot_product_attention` with no mask, so it runs on CPU and GPU without flash-attn.
The network knows nothing about diffusion: it maps (ids, sigma) to logits over the whole vocabulary (real ids +
[MASK]); `didi.diffusion` applies the SUBS parameterisation.

With `time_conditioning=False` (the paper's teacher) sigma is zeroed inside the model, as MDLM's
`_process_sigma` does, so the parameters exist either way and a time-unconditional teacher's weights load into a
time-conditional copy (the discriminator) unchanged.

Numerics follow MDLM: LayerNorm (weight only, no bias) in float32, the residual stream stays float32 while the
linears may run under the caller's bf16 autocast; rotary is applied in float32; logits come back as float32.

Parameter names, ours vs MDLM's `DIT` (released HF checkpoints prefix every MDLM name with `backbone.`):

| ours                                          | MDLM `models/dit.py`                        | note                            |
|-----------------------------------------------|---------------------------------------------|---------------------------------|
| `vocab_embed.weight` [V, D]                   | `vocab_embed.embedding` [V, D]              | nn.Embedding vs raw Parameter   |
| `sigma_map.mlp.0.{weight,bias}`               | same                                        | Linear(256, cond)               |
| `sigma_map.mlp.2.{weight,bias}`               | same                                        | Linear(cond, cond)              |
| (not stored)                                  | `rotary_emb.inv_freq`                       | a constant; drop it (or check)  |
| `blocks.N.norm1.weight`                       | same                                        | LayerNorm, no bias              |
| `blocks.N.attn_qkv.weight` [3D, D]            | same                                        | rows: (q|k|v) x heads x head_dim|
| `blocks.N.attn_out.weight`                    | same                                        | no bias                         |
| `blocks.N.norm2.weight`                       | same                                        |                                 |
| `blocks.N.mlp.0.{weight,bias}`                | same                                        | Linear(D, r D)                  |
| `blocks.N.mlp.2.{weight,bias}`                | same                                        | Linear(r D, D)                  |
| `blocks.N.adaLN_modulation.{weight,bias}`     | same                                        | Linear(cond, 6 D), zero init    |
| `output_layer.norm_final.weight`              | same                                        |                                 |
| `output_layer.linear.{weight,bias}`           | same                                        | untied, zero init               |
| `output_layer.adaLN_modulation.{weight,bias}` | same                                        | Linear(cond, 2 D), zero init    |

Rotary is the non-interleaved (rotate-half) form over the full head dimension, as flash-attn's
`apply_rotary_emb_qkv_` with MDLM's cos/sin, so converted weights compute the same function.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from didi import io


@dataclasses.dataclass
class DiTConfig:
    vocab_size: int          # real ids + [MASK]
    seq_len: int             # the training length L (rotary itself works at any length)
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    cond_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    time_conditioning: bool = False

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"model.hidden={self.hidden} is not divisible by model.heads={self.heads}")
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"head dimension {self.hidden // self.heads} must be even (rotary embedding)")

    @classmethod
    def from_config(cls, model_cfg: dict, vocab_size: int, seq_len: int) -> "DiTConfig":
        """From the config's `model:` section plus the sizes that come from the data."""
        names = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "seq_len"}
        unknown = set(model_cfg) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)} (known: {sorted(names)})")
        return cls(vocab_size=int(vocab_size), seq_len=int(seq_len), **model_cfg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- layers
class LayerNorm(nn.Module):
    """Weight-only LayerNorm computed in float32 (as MDLM's)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), [self.dim]) * self.weight


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Rotary(nn.Module):
    """cos/sin tables [L, head_dim] for rotate-half rotary embeddings (recomputed per call: cheap, no state)."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.to(device))
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, d]: pairs (i, i + d/2) rotated by position-dependent angles, in float32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the scalar sigma -> MLP (DiT/MDLM)."""

    def __init__(self, cond_dim: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class DDiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, cond_dim: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * dim, dim)
        )
        self.dropout = nn.Dropout(dropout)
        # adaLN-zero: every block starts as the identity
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)

        h = modulate(self.norm1(x), shift_msa, scale_msa)
        # MDLM's packed layout: 'b s (three h d) -> b s three h d'
        qkv = self.attn_qkv(h).view(B, L, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, d]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v)  # no mask: every position sees every other
        attn = attn.transpose(1, 2).reshape(B, L, D)
        x = x + gate_msa * self.dropout(self.attn_out(attn))

        x = x + gate_mlp * self.dropout(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class DDiTFinalLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden)
        self.linear = nn.Linear(hidden, out_channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ---------------------------------------------------------------------------------------------- the network
class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.vocab_embed = nn.Embedding(config.vocab_size, config.hidden)
        nn.init.kaiming_uniform_(self.vocab_embed.weight, a=math.sqrt(5))  # MDLM's EmbeddingLayer init
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.hidden // config.heads)
        self.blocks = nn.ModuleList(
            DDiTBlock(config.hidden, config.heads, config.cond_dim, config.mlp_ratio, config.dropout)
            for _ in range(config.layers)
        )
        self.output_layer = DDiTFinalLayer(config.hidden, config.vocab_size, config.cond_dim)

    @property
    def embed(self) -> nn.Embedding:
        """The token embedding (soft tokens enter as probs @ embed.weight through `inputs_embeds`)."""
        return self.vocab_embed

    def features(self, ids: torch.Tensor | None = None, sigma: torch.Tensor | None = None,
                 inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk: (ids [B, L] or inputs_embeds [B, L, D], sigma [B]) -> (h [B, L, D], c [B, cond_dim])."""
        if (ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of ids and inputs_embeds")
        x = self.vocab_embed(ids) if inputs_embeds is None else inputs_embeds
        B, L = x.shape[:2]
        if not self.config.time_conditioning:
            sigma = torch.zeros(B, device=x.device)  # time-unconditional: the noise level is not an input
        elif sigma is None:
            raise ValueError("this DiT is time-conditional: sigma is required")
        sigma = torch.as_tensor(sigma, device=x.device).float().reshape(-1).expand(B)
        c = F.silu(self.sigma_map(sigma))
        cos, sin = self.rotary_emb(L, x.device)
        for block in self.blocks:
            x = block(x, cos, sin, c)
        return x, c

    def head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """adaLN final layer: (h, c) -> logits [B, L, vocab_size] float32."""
        return self.output_layer(h, c).float()

    def forward(self, ids: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.head(*self.features(ids, sigma))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- save / load
def save_dit(out_dir, model: DiT, extra: dict | None = None) -> None:
    """An HF-style directory: model.safetensors + config.json {"kind": "didi-dit", "model": ..., **extra}."""
    config = {"kind": "didi-dit", "model": model.config.to_dict(), **(extra or {})}
    io.save_model_dir(out_dir, model.state_dict(), config)


def load_dit(model_dir, device="cpu") -> tuple[DiT, dict]:
    """Inverse of save_dit; strict (every missing or unexpected weight is an error). Returns (model in eval mode,
    the config.json dict)."""
    model_dir = Path(model_dir)
    state, config = io.load_model_dir(model_dir, device="cpu")
    if config.get("kind") != "didi-dit":
        raise ValueError(f"{model_dir} is not a DiT directory (config.json kind={config.get('kind')!r})")
    model = DiT(DiTConfig(**config["model"]))
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{model_dir}/model.safetensors does not match its config: "
                         f"missing keys {missing}, unexpected keys {unexpected}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{model_dir}/model.safetensors: {err}") from err
    return model.to(device).eval(), config


def mask_id_of(model: DiT, tokenizer, model_dir, tokenizer_dir) -> int:
    """[MASK] = len(tokenizer), the id after the tokenizer's own, which must be the model's last id."""
    mask_id = len(tokenizer)
    if model.config.vocab_size != mask_id + 1:
        raise ValueError(f"{model_dir}: model vocab {model.config.vocab_size} != len(tokenizer) + 1 = {mask_id + 1} "
                         f"(was it trained with tokenizer {tokenizer_dir}?)")
    return mask_id
