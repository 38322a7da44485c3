"""The judge of generative perplexity (command `train-judge`) and its loader `load_judge`.

- `judge.pretrained` set (paper scale: "gpt2-large", or a local directory): nothing is trained; `judge.json`
  points at it and records its held-out perplexity on our validation split (retokenised with its own tokenizer).
- `judge.pretrained: null` (embedded default): a GPT-2 (`GPT2LMHeadModel`) trained from scratch on the train
  split, packed into blocks of `judge.seq_len` with the same BOS/EOS wrap as the teacher's data; saved to
  `<out-dir>/model` with our tokenizer. `judge.json` records its held-out perplexity.

Held-out perplexity = exp(sum NLL / scored tokens) over the first `eval_batches` batches of validation blocks;
the first token of each block is not scored (nothing to condition on) and PAD labels are excluded.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from didi import config, data, io, runtime

log = logging.getLogger("didi.judge")

WEIGHT_DECAY = 0.1      # nanoGPT's GPT-2 recipe; config exposes only what the experiments vary
BETAS = (0.9, 0.95)
MIN_LR_FRACTION = 0.1   # cosine decays to 10% of the peak learning rate


def _resolve(judge_dir: Path, path: str) -> str:
    """A relative path in judge.json is relative to the judge directory when it exists there."""
    local = judge_dir / path
    return str(local) if not Path(path).is_absolute() and local.exists() else path


def load_judge(judge_dir: str | Path, info_name: str = "judge.json"):
    """(model in float32 eval mode, tokenizer, info) of the GPT-2 described by `judge_dir/<info_name>` (the judge's
    judge.json, or the AR baseline's baseline.json: the same pointer format)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge_dir = Path(judge_dir)
    info_path = judge_dir / info_name
    if not info_path.exists():
        raise FileNotFoundError(f"no {info_name} in {judge_dir} (run `didi train-judge` / `didi train-baseline`)")
    info = io.read_json(info_path)
    path = _resolve(judge_dir, info["path"])
    tokenizer_path = _resolve(judge_dir, info.get("tokenizer", info["path"]))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=Path(path).is_dir())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=Path(tokenizer_path).is_dir())
    return model.float().eval(), tokenizer, info


def judge_blocks(tokenizer, docs, seq_len: int, num_proc: int = 1) -> np.ndarray:
    """Documents tokenised with `tokenizer` and wrap-packed into [N, seq_len] blocks (BOS = EOS if no BOS)."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos  # wrap mode never pads
    tokenized = data.tokenize_documents(docs, tokenizer, num_proc)
    batches = (b["input_ids"] for b in tokenized.iter(batch_size=1000))
    dtype = data.token_dtype(len(tokenizer))
    parts = list(data.iter_blocks(batches, seq_len, bos, eos, pad, wrap=True, dtype=dtype))
    return np.concatenate(parts) if parts else np.empty((0, seq_len), dtype=dtype)


@torch.no_grad()
def heldout_perplexity(model, blocks: np.ndarray, batch_size: int, max_batches: int, pad_id: int | None,
                       device: torch.device) -> tuple[float, int]:
    """(perplexity, scored tokens) on the first `max_batches` batches of `blocks` (module docstring)."""
    if len(blocks) == 0:
        raise ValueError("no held-out blocks to score: the validation split is shorter than one judge block")
    was_training = model.training
    model.eval()
    nll, tokens = 0.0, 0
    for start in range(0, min(len(blocks), batch_size * max_batches), batch_size):
        x = torch.from_numpy(np.asarray(blocks[start:start + batch_size]).astype(np.int64)).to(device)
        logits = model(input_ids=x).logits.float()
        targets = x[:, 1:]
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        keep = (targets != pad_id).reshape(-1) if pad_id is not None else torch.ones_like(losses, dtype=torch.bool)
        nll += float(losses[keep].double().sum())
        tokens += int(keep.sum())
    model.train(was_training)
    return math.exp(nll / tokens), tokens


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to MIN_LR_FRACTION * peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


# ---------------------------------------------------------------------- shared with the AR baseline (didi.baseline)
def new_gpt2(vocab: int, special: dict, n_positions: int, n_embd: int, n_layer: int, n_head: int,
             dropout: float = 0.1, tie_embeddings: bool = True):
    """A freshly initialised float32 GPT2LMHeadModel (initialised from torch's global generator: seed it first)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model_config = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                              n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                              bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"],
                              tie_word_embeddings=tie_embeddings)
    return GPT2LMHeadModel(model_config).float()


def lm_step(model, optimizer, x: torch.Tensor, lr: float, grad_clip: float) -> torch.Tensor:
    """One next-token-prediction step of a causal LM on the blocks `x` at learning rate `lr`; the detached loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(input_ids=x, labels=x).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def train_judge(cfg: dict, corpus_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path) -> dict:
    """Train the local GPT-2 judge (judge.pretrained null) and write <out_dir>/model + judge.json."""
    from transformers import AutoTokenizer

    judge_cfg = cfg["judge"]
    out_dir = Path(out_dir)
    if judge_cfg["seq_len"] > judge_cfg["n_positions"]:
        raise config.ConfigError(f"judge.seq_len ({judge_cfg['seq_len']}) exceeds judge.n_positions "
                                 f"({judge_cfg['n_positions']})")
    device = io.default_device()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    special = data.special_ids(tokenizer)
    num_proc = cfg.get("data", {}).get("num_proc", 1)
    train = judge_blocks(tokenizer, data.read_split(corpus_dir, "train"), judge_cfg["seq_len"], num_proc)
    validation = judge_blocks(tokenizer, data.read_split(corpus_dir, "validation"), judge_cfg["seq_len"], num_proc)
    if len(train) == 0:
        raise ValueError(f"the train split is shorter than one judge block of {judge_cfg['seq_len']} tokens")

    io.seed_everything(cfg["seed"])  # weight init and dropout draw from torch's global generator
    model = new_gpt2(len(tokenizer), special, judge_cfg["n_positions"], judge_cfg["n_embd"], judge_cfg["n_layer"],
                     judge_cfg["n_head"]).to(device)
    batches = torch.Generator().manual_seed(cfg["seed"] + 1)  # which blocks each step sees
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=judge_cfg["lr"], betas=BETAS)
    ppl_init, _ = heldout_perplexity(model, validation, judge_cfg["batch_size"], judge_cfg["eval_batches"],
                                     special["pad"], device)
    log.info("judge: %d params, %d train / %d validation blocks of %d, held-out ppl at init %.1f (vocab %d)",
             sum(p.numel() for p in model.parameters()), len(train), len(validation), judge_cfg["seq_len"], ppl_init,
             len(tokenizer))

    progress = io.Progress(total=judge_cfg["steps"], every=judge_cfg["log_every"], desc="judge", unit="step")
    wandb_run = runtime.start_wandb(cfg, out_dir, "judge")
    model.train()
    t0 = time.perf_counter()
    loss_curve = []  # (step, training loss) every log_every steps: the dynamics figure draws it
    for step in range(judge_cfg["steps"]):
        lr = learning_rate(step, judge_cfg["lr"], judge_cfg["warmup_steps"], judge_cfg["steps"])
        rows = torch.randint(len(train), (judge_cfg["batch_size"],), generator=batches).numpy()
        x = torch.from_numpy(np.asarray(train[rows]).astype(np.int64)).to(device)
        loss = lm_step(model, optimizer, x, lr, 1.0)
        progress.update(step + 1, loss=loss.item(), lr=lr)
        if (step + 1) % judge_cfg["log_every"] == 0 or step + 1 == judge_cfg["steps"]:
            loss_curve.append((step + 1, loss.item()))
        if wandb_run and (step + 1) % judge_cfg["log_every"] == 0:
            wandb_run.log({"judge/loss": loss.item(), "judge/lr": lr}, step=step + 1)
    seconds = time.perf_counter() - t0

    ppl, tokens = heldout_perplexity(model, validation, judge_cfg["batch_size"], judge_cfg["eval_batches"],
                                     special["pad"], device)
    log.info("judge: held-out perplexity %.2f over %d tokens (init %.1f)", ppl, tokens, ppl_init)
    model.cpu()
    with io.atomic_dir(out_dir / "model") as tmp:
        model.save_pretrained(str(tmp))  # safetensors (the only format transformers 5 writes)
        tokenizer.save_pretrained(str(tmp))
    info = {
        "path": "model", "tokenizer": "model", "trained": True,  # relative to the judge directory
        "heldout_ppl": ppl, "heldout_tokens": tokens, "heldout_ppl_init": ppl_init, "steps": judge_cfg["steps"],
        "seq_len": judge_cfg["seq_len"], "train_blocks": len(train), "validation_blocks": len(validation),
        "final_train_loss": loss.item(), "train_seconds": seconds, "vocab": len(tokenizer),
        "params": sum(p.numel() for p in model.parameters()), "loss_curve": loss_curve,
    }
    io.write_metrics(out_dir / "judge.json", info, cfg)
    if wandb_run:
        wandb_run.log({"judge/heldout_ppl": ppl}, step=judge_cfg["steps"])
        wandb_run.finish()
    return info


def prepare_pretrained_judge(cfg: dict, corpus_dir: str | Path, out_dir: str | Path) -> dict:
    """A pretrained judge (hub name or local directory): measure its held-out perplexity, write judge.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge_cfg = cfg["judge"]
    name = judge_cfg["pretrained"]
    local = Path(name).expanduser()
    path = str(local.resolve()) if local.is_dir() else name  # absolute, so the pointer survives a change of cwd
    device = io.default_device()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local.is_dir())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=local.is_dir())
    model.to(device).eval()
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    seq_len = min(judge_cfg["seq_len"], context)
    validation = judge_blocks(tokenizer, data.read_split(corpus_dir, "validation"), seq_len,
                              cfg.get("data", {}).get("num_proc", 1))
    ppl, tokens = heldout_perplexity(model, validation, judge_cfg["batch_size"], judge_cfg["eval_batches"], None,
                                     device)
    log.info("judge %s: held-out perplexity %.2f over %d tokens", name, ppl, tokens)
    info = {"path": path, "tokenizer": path, "trained": False, "heldout_ppl": ppl, "heldout_tokens": tokens,
            "seq_len": seq_len, "vocab": len(tokenizer)}
    io.write_metrics(Path(out_dir) / "judge.json", info, cfg)
    return info


def _args(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--corpus-dir", required=True, help="output of `didi corpus`")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (used when the judge is trained here)")
    p.add_argument("--out-dir", required=True, help="writes judge.json (+ model/ when trained)")


def _run(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    cfg = config.from_args(args)
    data.quiet_datasets()
    hf_logging.disable_progress_bar()  # log files get Progress lines, not tqdm bars
    if cfg["judge"].get("kind", "lm") == "exact":  # the synthetic chain judges itself: nothing to train
        from didi import synthetic

        info = synthetic.exact_judge_info(cfg)
        io.write_metrics(Path(args.out_dir) / "judge.json", info, cfg)
        log.info("exact judge %s: data NLL floor %.4f nats/token", info["name"], info["nll_floor"])
    elif cfg["judge"]["pretrained"]:
        prepare_pretrained_judge(cfg, args.corpus_dir, args.out_dir)
    else:
        train_judge(cfg, args.corpus_dir, args.tokenizer, args.out_dir)


COMMANDS = {"train-judge": (_args, _run)}
