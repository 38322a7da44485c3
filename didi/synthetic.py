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


# ---------------------------------------------------------------------------------------------- exact denoiser
class ExactDenoiser:
    """The data's own denoiser: p(x_i | the visible tokens) of a first-order chain, exactly, as a drop-in for the
    DiT (`model(z [B, L], sigma [B]) -> logits [B, L, V+1]`, time-independent) on blocks [BOS] + states + [EOS].

    Sampled in K steps it is the best any denoiser (teacher or student) can do at K: what remains above the data's
    floor is the factorisation error of revealing several tokens in one step, which no better network removes. For
    a masked chain position i with the nearest visible states x_l on its left and x_r on its right,
        p(x_i = v | visible) oc P^(i-l)[x_l, v] P^(r-i)[v, x_r]
    (the first state is uniform, so with nothing visible on the left the left factor is the chain's marginal at i;
    with nothing on the right, the right factor is 1)."""

    def __init__(self, world: MarkovWorld, seq_len: int, mask_id: int, boundary_id: int):
        import torch

        if world.spec.order != 1:
            raise ValueError(f"the exact denoiser is written for order-1 chains, got order {world.spec.order}")
        V, n = world.spec.vocab_size, seq_len - 2
        if not V <= boundary_id < mask_id:
            raise ValueError(f"expected state ids 0..{V - 1} < boundary id {boundary_id} < [MASK] {mask_id}")
        P = torch.tensor(world.transition, dtype=torch.float64)
        powers = [torch.eye(V, dtype=torch.float64)]
        for _ in range(n):
            powers.append(powers[-1] @ P)
        self.powers = torch.stack(powers)  # [n + 1, V, V]: P^d
        self.marginal = self.powers[:n].mean(dim=1)  # [n, V]: the chain's marginal at position j (uniform start) P^j
        self.vocab, self.chain_len, self.seq_len, self.mask_id, self.boundary_id = V, n, seq_len, mask_id, boundary_id

    def eval(self):  # the samplers' model interface
        return self

    def __call__(self, z, sigma):
        import torch

        B, (V, n) = z.shape[0], (self.vocab, self.chain_len)
        if z.shape[1] != self.seq_len:
            raise ValueError(f"expected blocks of length {self.seq_len}, got {z.shape[1]}")
        x = z[:, 1:-1].cpu()
        visible = x != self.mask_id
        if (visible & (x >= V)).any():
            raise ValueError(f"the exact denoiser conditions on states only; got a visible id >= {V} at a chain "
                             f"position")
        pos = torch.arange(n).expand(B, n)
        left = torch.where(visible, pos, -1).cummax(dim=1).values  # nearest visible at or left of i (-1: none)
        right = torch.where(visible, pos, n).flip(1).cummin(dim=1).values.flip(1)  # ... at or right of i (n: none)
        x_left, x_right = x.gather(1, left.clamp(min=0)), x.gather(1, right.clamp(max=n - 1))
        x_left, x_right = torch.where(x_left < V, x_left, 0), torch.where(x_right < V, x_right, 0)
        left_factor = torch.where((left >= 0)[..., None], self.powers[(pos - left).clamp(max=n), x_left],
                                  self.marginal[pos])  # [B, n, V]
        right_factor = torch.where((right < n)[..., None], self.powers[(right - pos).clamp(max=n), :, x_right],
                                   1.0)  # [B, n, V]: P^d[v, x_r]
        logits = torch.full((B, self.seq_len, self.mask_id + 1), float("-inf"), dtype=torch.float64)
        logits[:, 1:-1, :V] = (left_factor * right_factor).log()
        logits[:, [0, -1], self.boundary_id] = 0.0  # BOS and EOS are certain
        return logits.float().to(z.device)


# ---------------------------------------------------------------------------------------------- workflow plumbing
# `corpus.source: "synthetic:markov"`: each document is one chain sequence of L - 2 states written "s12 s3 s7 ...";
# the tokenizer maps state s<i> to id i (then EOS = BOS and [PAD]), and `data.wrap: false` packs each document
# into exactly one block [BOS] + its L - 2 states + [EOS]. Chain positions of a block are 1 .. L - 2.
SOURCE = "synthetic:markov"
SPEC_KEYS = [f.name for f in dataclasses.fields(MarkovSpec)]


def spec_from_corpus(corpus: dict) -> MarkovSpec:
    """The chain of a `corpus` config section (its `synthetic` subsection); errors name the key."""
    section = corpus.get("synthetic")
    if not isinstance(section, dict):
        raise ValueError(f"corpus.source {SOURCE!r} needs a corpus.synthetic section ({', '.join(SPEC_KEYS)}, "
                         f"num_sequences)")
    missing = [k for k in SPEC_KEYS if k not in section]
    if missing:
        raise ValueError(f"corpus.synthetic is missing {', '.join(missing)}")
    return MarkovSpec.from_config(section)


def state_text(row) -> str:
    return " ".join(f"s{int(s)}" for s in row)


def chain_documents(corpus: dict, seq_len: int, seed: int) -> tuple[list[str], list[str], MarkovWorld]:
    """(ids, texts, world): `corpus.synthetic.num_sequences` chain sequences of seq_len - 2 states, drawn with
    `seed` (the config seed; the chain itself is fixed by corpus.synthetic.seed)."""
    world = MarkovWorld(spec_from_corpus(corpus))
    n = int(corpus["synthetic"]["num_sequences"])
    states = world.sample(n, seq_len - 2, seed)
    width = len(str(max(n - 1, 0)))
    return [f"{i:0{width}d}" for i in range(n)], [state_text(row) for row in states], world


def state_tokenizer(vocab_size: int, eos_token: str, pad_token: str):
    """A WordLevel tokenizer (built, not trained): "s<i>" -> id i for i < V, then EOS (= BOS) = V, [PAD] = V + 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"s{i}": i for i in range(vocab_size)}
    vocab[eos_token], vocab[pad_token] = vocab_size, vocab_size + 1
    word_level = Tokenizer(models.WordLevel(vocab, unk_token=pad_token))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    word_level.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    word_level.add_special_tokens([eos_token, pad_token])
    return PreTrainedTokenizerFast(tokenizer_object=word_level, bos_token=eos_token, eos_token=eos_token,
                                   pad_token=pad_token)


# ---------------------------------------------------------------------------------------------- exact judge
def exact_judge_info(cfg: dict) -> dict:
    """What `judge.json` records for `judge.kind: exact`: the chain, where it sits in a block, and its floor."""
    corpus, seq_len = cfg["corpus"], cfg["data"]["seq_len"]
    if corpus["source"] != SOURCE or cfg["data"]["wrap"]:
        raise ValueError(f"judge.kind exact scores blocks [BOS] + one chain sequence + [EOS]: it needs "
                         f"corpus.source {SOURCE!r} (got {corpus['source']!r}) and data.wrap false "
                         f"(got {cfg['data']['wrap']})")
    spec = spec_from_corpus(corpus)
    if spec.leak <= 0:
        raise ValueError("judge.kind exact needs corpus.synthetic.leak > 0 (else some sequences have NLL infinity)")
    world = MarkovWorld(spec)
    chain_len = seq_len - 2
    return {
        "kind": "exact", "trained": False, "path": SOURCE, "name": exact_judge_name(spec),
        "spec": dataclasses.asdict(spec), "seq_len": seq_len, "chain_positions": [1, seq_len - 1],
        "nll_floor": world.nll_per_token(chain_len),  # nats/token over the chain positions
        # the same over all L positions of a block (BOS and EOS are certain): what the teacher's bound can reach
        "block_nll_floor": world.nll_per_token(chain_len) * chain_len / seq_len,
        "invalid_log_prob": invalid_log_prob(spec),
        "vocab": spec.vocab_size,
    }


def exact_judge_name(spec: MarkovSpec) -> str:
    return f"exact-markov-V{spec.vocab_size}-k{spec.order}-b{spec.branching}-leak{spec.leak:g}"


def invalid_log_prob(spec: MarkovSpec) -> float:
    """The score of a non-state token at a chain position (probability 0 under the data): log(leak / V), the
    log-probability of the least likely transition the chain allows. Such tokens are also counted."""
    return math.log(spec.leak / spec.vocab_size)


def score_blocks(world: MarkovWorld, blocks: np.ndarray, floor: float) -> dict:
    """Exact log-likelihood of the chain positions 1 .. L-2 of [n, L] blocks.

    A position holding a non-state id (BOS/EOS/PAD/...) scores `floor` and is counted in `invalid`; a position
    whose order-k context holds such an id restarts the chain there (scored as a first state, log 1/V).
    Returns {"nll" [n] sums (nats), "tokens" [n] scored positions, "invalid" [n] non-state ids at chain positions}."""
    blocks = np.asarray(blocks, dtype=np.int64)
    if blocks.ndim != 2 or blocks.shape[1] < 3:
        raise ValueError(f"expected [n, L >= 3] blocks, got shape {blocks.shape}")
    V, k = world.spec.vocab_size, world.spec.order
    x = blocks[:, 1:-1]
    valid = (x >= 0) & (x < V)
    log_p = world.token_log_probs(np.where(valid, x, 0))
    context_ok = np.ones_like(valid)
    for j in range(1, k + 1):  # every one of the k previous positions (within the chain) must be a state
        context_ok[:, j:] &= valid[:, :-j]
    context_ok[:, :k] = False  # the first k states are uniform anyway
    log_p = np.where(context_ok, log_p, -math.log(V))
    log_p = np.where(valid, log_p, floor)
    return {"nll": -log_p.sum(axis=1), "tokens": np.full(len(x), x.shape[1], dtype=np.int64),
            "invalid": (~valid).sum(axis=1)}
