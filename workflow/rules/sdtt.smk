# SDTT (Self-Distillation Through Time, didi/sdtt.py, docs/sdtt.md): the multi-round few-step baseline. One run
# writes one student per round, {R}/distill/sdtt/nfe{K}/{student,student_raw}/, K = the sampling steps that round's
# student is trained for (start_nfe / 2, ..., min_nfe). The outputs are those model directories and metrics.json,
# not {R}/distill/sdtt/ as a whole: Snakemake empties a directory() output before its job starts, which would delete
# the checkpoints/ a killed run resumes from (a resumed run republishes the finished rounds from there).


rule distill_sdtt:
    input:
        teacher=f"{R}/teacher/ema",
        tokens=f"{R}/tokens/train.npy",
        token_stats=f"{R}/tokens/train.json",
        tokenizer=f"{R}/tokenizer",
    output:
        students=[
            directory(f"{R}/distill/sdtt/nfe{k}/{weights}")
            for k in sdtt_nfes()
            for weights in STUDENT_DIRS.values()
        ],
        metrics=f"{R}/distill/sdtt/metrics.json",
    log:
        f"{R}/logs/distill/sdtt.log",
    benchmark:
        f"{R}/benchmarks/distill/sdtt.tsv"
    priority: 5  # the longest jobs after the teacher: started before the sampling jobs that can wait
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("train"),
        gpu=config["resources"]["gpu"],
    params:
        rerun_on=relevant("distill_sdtt"),
        config_json=command_config("distill_sdtt"),
        out_dir=parent_of("metrics"),
        nproc=train_procs(),
    shell:
        logged(
            "({DIDI} check-inputs --teacher {input.teacher} --tokens {input.token_stats} --tokenizer {input.tokenizer}"
            " && OMP_NUM_THREADS={threads} {TORCHRUN} --nproc-per-node {params.nproc} -m didi distill-sdtt"
            " --config-json {params.config_json:q} --teacher {input.teacher} --tokens {input.tokens}"
            " --tokenizer {input.tokenizer} --out-dir {params.out_dir})"
        )
