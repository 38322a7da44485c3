"""`didi <command>`: one entry point for every workflow step. Each command's module is imported only
when that command runs, so `didi evaluate` does not pay for importing the distillation code.

A module serving commands defines `COMMANDS = {name: (add_arguments, run)}` where
`add_arguments(parser)` adds its options and `run(args) -> int | None` does the work.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from didi import io

# command -> (module, one-line help)
MODULES: dict[str, tuple[str, str]] = {
    "corpus": ("didi.data", "read the corpus and split it into train/validation by document"),
    "tokenizer": ("didi.data", "train a byte-level BPE tokenizer or load a pretrained one"),
    "tokenize": ("didi.data", "tokenize a split and pack it into blocks of L tokens"),
    "train-teacher": ("didi.train", "pretrain the MDLM teacher (resumable, DDP via torchrun)"),
    "import-teacher": ("didi.train", "use a converted released teacher (teacher.init_from) as is, in place of training"),
    "sample": ("didi.sample", "sample a diffusion model (ancestral or RGAS) at a given NFE"),
    "train-judge": ("didi.judge", "train the local GPT-2 judge or prepare a pretrained one"),
    "train-baseline": ("didi.baseline", "train the autoregressive GPT-2 baseline or point at a pretrained one"),
    "sample-baseline": ("didi.baseline", "sample the AR baseline (KV cache) in the diffusion samplers' format"),
    "evaluate": ("didi.evaluate", "gen-PPL, entropy and MAUVE of one sample file"),
    "reference": ("didi.evaluate", "the same metrics for held-out real text"),
    "table": ("didi.tables", "collect evaluation files into the tidy results table"),
    "figures": ("didi.tables", "draw the figures and markdown tables from the results table"),
    "cost": ("didi.tables", "the distillation-cost table: wall-clock of each distillation and the quality it reaches"),
    "dynamics": ("didi.tables", "draw the training-dynamics figure (distillation, teacher and judge curves)"),
    "check-inputs": ("didi.config", "check that teacher, token blocks and tokenizer agree on L and vocabulary"),
    "distill": ("didi.distill_cli", "DiDi-Instruct distillation of the teacher into a few-step student"),
    "distill-sdtt": ("didi.sdtt", "SDTT (self-distillation through time): the multi-round few-step baseline"),
    "convert": ("didi.convert", "convert a released MDLM/DUO checkpoint into a didi model directory"),
    "study": ("didi.study", "the distillation study on the exact world (rows of distill overrides x seeds)"),
    "bench": ("didi.bench", "benchmarks: training and sampling throughput, written to results/bench"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="didi", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    chosen = argv[0] if argv and argv[0] in MODULES else None
    for name, (module, help_text) in MODULES.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            add_arguments, _ = importlib.import_module(module).COMMANDS[name]
            add_arguments(p)
    args = parser.parse_args(argv)
    io.setup_logging()
    _, run = importlib.import_module(MODULES[args.command][0]).COMMANDS[args.command]
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
