# DiDi-Instruct, reproduced: corpus -> tokenizer -> tokens -> MDLM teacher -> DiDi-Instruct students (+ ablations)
# -> NFE-sweep samples -> judge perplexity, entropy, MAUVE -> tables, figures, report.
# The rules are thin wrappers around `didi <command>`; the science lives in the didi/ package.


from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
