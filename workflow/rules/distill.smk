# DiDi-Instruct distillation: one run per variant (the full method and the paper's cumulative ablation) and
# distillation seed (distill.seeds). Before it starts, `didi check-inputs` checks that teacher, token blocks and
# tokenizer agree on L and vocabulary, and names the file that does not.


rule distill:
    input:
        unpack(distill_inputs),
    output:
        student=directory(f"{R}/distill/{{variant}}/seed{{seed}}/student"),
        student_raw=directory(f"{R}/distill/{{variant}}/seed{{seed}}/student_raw"),
        discriminator=directory(f"{R}/distill/{{variant}}/seed{{seed}}/discriminator"),
        metrics=f"{R}/distill/{{variant}}/seed{{seed}}/metrics.json",
    log:
        f"{R}/logs/distill/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/distill/{{variant}}/seed{{seed}}.tsv"
    priority: 5  # the longest jobs after the teacher: started before the sampling jobs that can wait
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("train"),
        gpu=config["resources"]["gpu"],
    params:
        rerun_on=relevant("distill"),
        config_json=command_config("distill"),
        method=lambda wc: json.dumps(variant_method(config, wc.variant), sort_keys=True),
        out_dir=parent_of("metrics"),
        nproc=train_procs(),
        pool=lambda wc, input: (
            f"--teacher-pool {input.pool}" if "pool" in input.keys() else ""
        ),
    shell:
        logged(
            "({DIDI} check-inputs --teacher {input.teacher} --tokens {input.token_stats} --tokenizer {input.tokenizer}"
            " && OMP_NUM_THREADS={threads} {TORCHRUN} --nproc-per-node {params.nproc} -m didi distill"
            " --config-json {params.config_json:q} --teacher {input.teacher} --tokens {input.tokens}"
            " --tokenizer {input.tokenizer} --variant {wildcards.variant} --seed {wildcards.seed} {params.pool} --out-dir {params.out_dir})"
        )
