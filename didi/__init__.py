"""didi: a reproducible DiDi-Instruct workflow (masked diffusion LM distillation)."""

__version__ = "0.1.0"
