"""The judge of generative perplexity (command `train-judge`) and its loader `load_judge`.

- `judge.pretrained` set (paper scale: "gpt2-large", or a local directory): nothing is trained; `judge.json`
  points at it and records its held-out perplexity on our validation split (retokenised with its own tokenizer).
- `judge.pretrained: null` (embedded default): a GPT-2 (`GPT2LMHeadModel`) trained from scratch on the train
  split, packed into blocks of `judge.seq_len` with the same BOS/EOS wrap as the teacher's data, by the trainers'
  loop (`runtime.train`: a killed run resumes from `<out-dir>/checkpoints` and ends as the uninterrupted one);
  saved to `<out-dir>/model` with our tokenizer. `judge.json` records its held-out perplexity.
- `judge.kind: exact` (`config.is_exact_judge`): the synthetic chain judges itself; judge.json describes it.

Held-out perplexity = exp(sum NLL / scored tokens) over the first `eval_batches` batches of validation blocks;
the first token of each block is not scored (nothing to condition on) and PAD labels are excluded.
"""

from __future__ import annotations

import argparse
import logging
import math
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
        x = runtime.to_tensor(blocks[start:start + batch_size], device)
        logits = model(input_ids=x).logits.float()
        targets = x[:, 1:]
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        keep = (targets != pad_id).reshape(-1) if pad_id is not None else torch.ones_like(losses, dtype=torch.bool)
        nll += float(losses[keep].double().sum())
        tokens += int(keep.sum())
    model.train(was_training)
    return math.exp(nll / tokens), tokens


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


def pretrained_lm(name: str, device: torch.device):
    """(pointer, model in float32 eval mode on `device`, tokenizer, context) of a pretrained causal LM, a hub name
    or a local directory. The pointer (judge.json's / baseline.json's path fields) names a local directory by its
    absolute path, so it survives a change of cwd."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name).expanduser()
    path = str(local.resolve()) if local.is_dir() else name
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local.is_dir())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=local.is_dir())
    model.to(device).eval()
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    return {"path": path, "tokenizer": path, "trained": False}, model, tokenizer, context


def save_lm(out_dir: Path, model, tokenizer) -> None:
    """out_dir/model: the model (safetensors, the only format transformers 5 writes) and its tokenizer."""
    with io.atomic_dir(out_dir / "model") as tmp:
        model.cpu().save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


# ---------------------------------------------------------------------------------------------- the judge
def resume_identity(cfg: dict, n_train_blocks: int) -> dict:
    """What a checkpoint must share with this run to be resumed: stages.STEPS["train_judge"]'s keys (judge.steps
    among them: the cosine spans the run, so a run of other length starts over), the number of training blocks and
    the code the judge's training runs."""
    return runtime.step_identity("train_judge", cfg, train_blocks=n_train_blocks)


def train_judge(cfg: dict, corpus_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path,
                max_steps: int | None = None) -> dict | None:
    """Train (or resume) the local GPT-2 judge (judge.pretrained null) and write <out_dir>/model + judge.json.
    `max_steps` stops after that many steps without writing them (as a kill would). Returns judge.json's content
    when done."""
    from transformers import AutoTokenizer

    judge_cfg = cfg["judge"]
    out_dir = Path(out_dir)
    if judge_cfg["seq_len"] > judge_cfg["n_positions"]:
        raise config.ConfigError(f"judge.seq_len ({judge_cfg['seq_len']}) exceeds judge.n_positions "
                                 f"({judge_cfg['n_positions']})")
    info = runtime.start_process()  # one process
    device = info.device
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    special = data.special_ids(tokenizer)
    num_proc = cfg.get("data", {}).get("num_proc", 1)
    train = judge_blocks(tokenizer, data.read_split(corpus_dir, "train"), judge_cfg["seq_len"], num_proc)
    validation = judge_blocks(tokenizer, data.read_split(corpus_dir, "validation"), judge_cfg["seq_len"], num_proc)
    if len(train) == 0:
        raise ValueError(f"the train split is shorter than one judge block of {judge_cfg['seq_len']} tokens")

    # The judge draws statefully (unlike the teacher, it does not reseed per step): weight init and dropout from
    # torch's global generator, the rows of each batch from `batches`; checkpoints save both generators' states.
    io.seed_everything(cfg["seed"])
    model = new_gpt2(len(tokenizer), special, judge_cfg["n_positions"], judge_cfg["n_embd"], judge_cfg["n_layer"],
                     judge_cfg["n_head"]).to(device)
    batches = torch.Generator().manual_seed(cfg["seed"] + 1)
    optimizer = runtime.adamw(model, judge_cfg["lr"], BETAS, weight_decay=WEIGHT_DECAY, decay_vectors=False)
    ppl_init, _ = heldout_perplexity(model, validation, judge_cfg["batch_size"], judge_cfg["eval_batches"],
                                     special["pad"], device)
    log.info("judge: %d params, %d train / %d validation blocks of %d, held-out ppl at init %.1f (vocab %d)",
             sum(p.numel() for p in model.parameters()), len(train), len(validation), judge_cfg["seq_len"], ppl_init,
             len(tokenizer))

    def loss_at(step: int) -> torch.Tensor:
        rows = torch.randint(len(train), (judge_cfg["batch_size"],), generator=batches).numpy()
        x = runtime.to_tensor(train[rows], device)
        return model(input_ids=x, labels=x).loss

    steps = judge_cfg["steps"]
    recipe = runtime.Recipe(
        steps=steps, lr=lambda step: runtime.cosine_lr(step, judge_cfg["lr"], judge_cfg["warmup_steps"], steps,
                                                       MIN_LR_FRACTION),
        grad_clip=1.0, log_every=judge_cfg["log_every"], checkpoint_every=judge_cfg["checkpoint_every"],
        tokens_per_step=judge_cfg["batch_size"] * judge_cfg["seq_len"], curve="last")
    wandb_run = runtime.start_wandb(cfg, out_dir, "judge")
    generators = {"batches": batches, "torch": runtime.global_generator(device)}
    trained = runtime.train(model, optimizer, loss_at, recipe, out_dir, resume_identity(cfg, len(train)), info,
                            wandb_run=wandb_run, generators=generators, desc="judge", logger=log, max_steps=max_steps)
    if not trained.finished:
        return None

    ppl, tokens = heldout_perplexity(model, validation, judge_cfg["batch_size"], judge_cfg["eval_batches"],
                                     special["pad"], device)
    log.info("judge: held-out perplexity %.2f over %d tokens (init %.1f)", ppl, tokens, ppl_init)
    save_lm(out_dir, model, tokenizer)
    loss_curve = trained.history["loss_curve"]
    result = {
        "path": "model", "tokenizer": "model", "trained": True,  # relative to the judge directory
        "heldout_ppl": ppl, "heldout_tokens": tokens, "heldout_ppl_init": ppl_init, "steps": steps,
        "seq_len": judge_cfg["seq_len"], "train_blocks": len(train), "validation_blocks": len(validation),
        "final_train_loss": loss_curve[-1][1], "train_seconds": trained.history["wall_clock_s"],
        "vocab": len(tokenizer), "params": sum(p.numel() for p in model.parameters()), "loss_curve": loss_curve,
        "resumed_from_step": trained.resumed_from_step,
    }
    io.write_metrics(out_dir / "judge.json", result, cfg)
    if wandb_run:
        wandb_run.log({"judge/heldout_ppl": ppl}, step=steps)
        wandb_run.finish()
    return result


def prepare_pretrained_judge(cfg: dict, corpus_dir: str | Path, out_dir: str | Path) -> dict:
    """A pretrained judge (hub name or local directory): measure its held-out perplexity, write judge.json."""
    judge_cfg = cfg["judge"]
    device = io.default_device()
    pointer, model, tokenizer, context = pretrained_lm(judge_cfg["pretrained"], device)
    seq_len = min(judge_cfg["seq_len"], context)
    validation = judge_blocks(tokenizer, data.read_split(corpus_dir, "validation"), seq_len,
                              cfg.get("data", {}).get("num_proc", 1))
    ppl, tokens = heldout_perplexity(model, validation, judge_cfg["batch_size"], judge_cfg["eval_batches"], None,
                                     device)
    log.info("judge %s: held-out perplexity %.2f over %d tokens", judge_cfg["pretrained"], ppl, tokens)
    result = {**pointer, "heldout_ppl": ppl, "heldout_tokens": tokens, "seq_len": seq_len, "vocab": len(tokenizer)}
    io.write_metrics(Path(out_dir) / "judge.json", result, cfg)
    return result


def _args(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--corpus-dir", required=True, help="output of `didi corpus`")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (used when the judge is trained here)")
    p.add_argument("--out-dir", required=True, help="writes judge.json (+ model/ and checkpoints/ when trained)")


def _run(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    cfg = config.from_args(args)
    data.quiet_datasets()
    hf_logging.disable_progress_bar()  # log files get Progress lines, not tqdm bars
    if config.is_exact_judge(cfg["judge"]):  # the synthetic chain judges itself: nothing to train
        from didi import synthetic

        info = synthetic.exact_judge_info(cfg)
        io.write_metrics(Path(args.out_dir) / "judge.json", info, cfg)
        log.info("exact judge %s: data NLL floor %.4f nats/token", info["name"], info["nll_floor"])
    elif cfg["judge"]["pretrained"]:
        prepare_pretrained_judge(cfg, args.corpus_dir, args.out_dir)
    else:
        train_judge(cfg, args.corpus_dir, args.tokenizer, args.out_dir)


COMMANDS = {"train-judge": (_args, _run)}
