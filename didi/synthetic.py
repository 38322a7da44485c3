"""An exact-likelihood world: a sparse Markov chain whose samples, true log-likelihood and entropy are known.

Distillation is judged here by the generating process itself rather than by a learned judge, so "the student is
better than its teacher" is a statement about the true distribution. The chain:
 - states 0 .. V-1; order k: the next state depends on the previous k states;
 - each context has `branching` likely successors (drawn without replacement) with Dirichlet(concentration)
   weights, mixed with `leak` x uniform over all V states, so every sequence has a finite (if large) NLL;
 - the first k states of a sequence are uniform (i.i.d.).
Everything is a deterministic function of the seed (numpy's PCG64 through SeedSequence).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class MarkovSpec:
    vocab_size: int = 32
    order: int = 1
    branching: int = 2
    leak: float = 0.05
    concentration: float = 1.0
    seed: int = 0

    @classmethod
    def from_config(cls, section: dict) -> "MarkovSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})


class MarkovWorld:
    def __init__(self, spec: MarkovSpec):
        if spec.branching < 1 or spec.branching > spec.vocab_size:
            raise ValueError(f"branching must be in [1, vocab_size={spec.vocab_size}], got {spec.branching}")
        if not 0.0 <= spec.leak < 1.0:
            raise ValueError(f"leak must be in [0, 1), got {spec.leak}")
        if spec.order < 1 or spec.vocab_size ** spec.order > 2**20:
            raise ValueError(f"order {spec.order} with vocab {spec.vocab_size}: 1 <= order and V^order <= 2^20")
        self.spec = spec
        V, k = spec.vocab_size, spec.order
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x4D41524B]))  # "MARK"
        contexts = V**k
        table = np.full((contexts, V), spec.leak / V)
        for c in range(contexts):
            succ = rng.choice(V, size=spec.branching, replace=False)
            table[c, succ] += (1.0 - spec.leak) * rng.dirichlet(np.full(spec.branching, spec.concentration))
        self.transition = table / table.sum(axis=1, keepdims=True)  # [V^k, V], rows sum to 1
        self.log_transition = np.log(self.transition)

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    def context_index(self, x: np.ndarray, end: int) -> np.ndarray:
        """Index of the context x[:, end-k:end] in the table (base-V number, oldest state most significant)."""
        V, k = self.spec.vocab_size, self.spec.order
        idx = np.zeros(x.shape[0], dtype=np.int64)
        for j in range(end - k, end):
            idx = idx * V + x[:, j]
        return idx

    def sample(self, n: int, length: int, seed: int) -> np.ndarray:
        """n sequences of `length` states [n, length] (int64), a deterministic function of `seed`."""
        if length < self.spec.order:
            raise ValueError(f"length {length} is shorter than the chain's order {self.spec.order}")
        rng = np.random.default_rng(np.random.SeedSequence([self.spec.seed, seed, 0x53414D50]))  # "SAMP"
        V, k = self.spec.vocab_size, self.spec.order
        x = np.empty((n, length), dtype=np.int64)
        x[:, :k] = rng.integers(0, V, size=(n, k))
        cdf = np.cumsum(self.transition, axis=1)
        for i in range(k, length):
            u = rng.random(n)[:, None]
            rows = cdf[self.context_index(x, i)]
            x[:, i] = np.minimum((u > rows).sum(axis=1), V - 1)
        return x

    def token_log_probs(self, x: np.ndarray) -> np.ndarray:
        """log q(x_i | x_<i) per position [n, length] under the chain (float64). Ids outside [0, V) are errors."""
        x = np.asarray(x, dtype=np.int64)
        if x.ndim != 2:
            raise ValueError(f"expected [n, length] states, got shape {x.shape}")
        if x.size and (x.min() < 0 or x.max() >= self.spec.vocab_size):
            raise ValueError(f"states must be in [0, {self.spec.vocab_size}); got [{x.min()}, {x.max()}]")
        V, k = self.spec.vocab_size, self.spec.order
        out = np.empty(x.shape, dtype=np.float64)
        out[:, :k] = -math.log(V)
        for i in range(k, x.shape[1]):
            out[:, i] = self.log_transition[self.context_index(x, i), x[:, i]]
        return out

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log q(x) per sequence [n]."""
        return self.token_log_probs(x).sum(axis=1)

    def expected_nll_per_position(self, length: int) -> np.ndarray:
        """E_q[-log q(x_i | x_<i)] for i = 0..length-1, exactly (the context marginal propagated forward).

        Their mean is the data's NLL per token: the floor no model can beat in expectation."""
        V, k = self.spec.vocab_size, self.spec.order
        cond_entropy = -(self.transition * self.log_transition).sum(axis=1)  # [V^k]
        out = np.empty(length)
        out[: min(k, length)] = math.log(V)
        context = np.full(V**k, 1.0 / V**k)  # the first k states are i.i.d. uniform
        for i in range(k, length):
            out[i] = context @ cond_entropy
            joint = context[:, None] * self.transition  # [V^k, V]: (context, next)
            # the new context drops the oldest state: (c mod V^(k-1)) * V + next
            new_context = np.zeros(V**k)
            np.add.at(new_context, ((np.arange(V**k) % V ** (k - 1)) * V)[:, None] + np.arange(V)[None, :], joint)
            context = new_context
        return out

    def nll_per_token(self, length: int) -> float:
        return float(self.expected_nll_per_position(length).mean())
