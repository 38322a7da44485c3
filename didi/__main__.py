"""`python -m didi <command>`: the same entry point as the `didi` script, through whichever Python runs it (the
workflow rules use Snakemake's own interpreter, so no virtual environment needs activating)."""

import sys

from didi.cli import main

sys.exit(main())
