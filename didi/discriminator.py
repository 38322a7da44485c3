"""The DiDi-Instruct discriminator (docs/method.md section 2, step 5).

A copy of the teacher's DiT trunk (embedding -> blocks), conditioned on the TRUE noise level, with a small
spectral-norm head giving one logit per token. Only the last N blocks and the head are trainable. At the BCE
optimum its logit is log q_real(z_t) / q_student(z_t): the density ratio the student's reward is built from.
It also takes soft tokens (probabilities over the vocabulary, embedded as probs @ embedding matrix), which is
what RGAS differentiates through (docs/method.md section 3).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from didi import io
from didi.model import DiT, DiTConfig


class Discriminator(nn.Module):
    def __init__(self, config: DiTConfig, trainable_blocks: int):
        super().__init__()
        # The teacher ignores its noise-level input; the discriminator must see it (the density ratio depends on t).
        self.config = dataclasses.replace(config, time_conditioning=True)
        self.trainable_blocks = int(trainable_blocks)
        self.trunk = DiT(self.config)
        d = self.config.hidden
        self.head = nn.Sequential(spectral_norm(nn.Linear(d, d)), nn.SiLU(), spectral_norm(nn.Linear(d, 1)))
        self.freeze_trunk()

    @classmethod
    def from_teacher(cls, teacher: DiT, trainable_blocks: int) -> "Discriminator":
        """A discriminator whose trunk holds the teacher's weights (copied explicitly, strictly)."""
        disc = cls(teacher.config, trainable_blocks)
        disc.trunk.load_state_dict(teacher.state_dict(), strict=True)
        return disc.to(next(teacher.parameters()).device)

    def freeze_trunk(self) -> None:
        """Everything in the trunk is frozen except its last `trainable_blocks` blocks; the head always trains."""
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        if self.trainable_blocks > 0:
            for block in self.trunk.blocks[-self.trainable_blocks:]:
                for p in block.parameters():
                    p.requires_grad_(True)

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """z [B, L] token ids (may hold [MASK]), sigma [B] true noise level -> logits [B, L] float32."""
        h, _ = self.trunk.features(ids=z, sigma=sigma)
        return self.logit(h)

    def forward_soft(self, probs: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """probs [B, L, V+1] (rows on the simplex; one-hot where a token is known) -> logits [B, L]."""
        weight = self.trunk.embed.weight
        h, _ = self.trunk.features(inputs_embeds=probs.to(weight.dtype) @ weight, sigma=sigma)
        return self.logit(h)

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        """The head on the trunk's features [B, L, d] -> [B, L], in float32 under a caller's bf16 autocast too (the
        reward is a difference of these logits)."""
        with torch.autocast(h.device.type, enabled=False):
            return self.head(h.float()).squeeze(-1)


def save_discriminator(out_dir, disc: Discriminator, extra: dict | None = None) -> None:
    """A model directory: weights (incl. the spectral-norm u/v vectors) + the trunk config."""
    config = {"dit": disc.config.to_dict(), "trainable_blocks": disc.trainable_blocks, "kind": "didi-discriminator"}
    io.save_model_dir(out_dir, disc.state_dict(), config, **(extra or {}))


def load_discriminator(model_dir, device="cpu") -> Discriminator:
    """Inverse of save_discriminator; strict, in eval mode (spectral norm then uses the stored u/v)."""
    state, config = io.load_model_dir(model_dir, device="cpu")
    if config.get("kind") != "didi-discriminator":
        raise ValueError(f"{model_dir} is not a discriminator directory (config.json kind={config.get('kind')!r})")
    disc = Discriminator(DiTConfig(**config["dit"]), config["trainable_blocks"])
    disc.load_state_dict(state, strict=True)
    return disc.to(device).eval()
