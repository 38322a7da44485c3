# DiDi-Instruct, reproduced: corpus -> tokenizer -> tokens -> MDLM teacher -> DiDi-Instruct students (+ ablations)
# -> NFE-sweep samples -> judge perplexity, entropy, MAUVE -> tables, figures, report.
# The rules are thin wrappers around `didi <command>`; the science lives in the didi/ package.


import os
import sys

from snakemake.utils import min_version

from didi.config import check_profiles, validate

min_version("9.0")


configfile: "config.yaml"


# The schema and every cross-key check (variants, RGAS variants, NFE <= L, paths) before any job runs; the error
# names the config file(s) and the key.
config_files = dict.fromkeys(os.path.abspath(f) for f in workflow.configfiles)
validate(config, source=", ".join(config_files) or "config", sweeps=True)
# A cluster profile still holding its EDIT-... placeholders (profiles/slurm/config.yaml as shipped) stops here, dry
# runs included, naming the profile file and each key to fill in: before anything is planned or submitted.
if workflow.is_main_process:
    check_profiles(sys.argv[1:], os.environ.get("SNAKEMAKE_PROFILE"))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/sdtt.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
