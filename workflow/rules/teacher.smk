# MDLM teacher pretraining (resumable; DDP through torchrun).


rule train_teacher:
    input:
        train=f"{R}/tokens/train.npy",
        validation=f"{R}/tokens/validation.npy",
        tokenizer=rules.tokenizer.output,
    output:
        ema=directory(f"{R}/teacher/ema"),
        raw=directory(f"{R}/teacher/raw"),
        metrics=f"{R}/teacher/metrics.json",
    log:
        f"{R}/logs/train_teacher.log",
    benchmark:
        f"{R}/benchmarks/train_teacher.tsv"
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("train"),
        gpu=config["resources"]["gpu"],
    params:
        rerun_on=relevant("train_teacher"),
        config_json=command_config("train_teacher"),
        tokens=parent_of("train", "input"),
        out_dir=parent_of("metrics"),
        nproc=train_procs(),
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {TORCHRUN} --nproc-per-node {params.nproc} -m didi train-teacher"
            " --config-json {params.config_json:q} --tokens {params.tokens}"
            " --tokenizer {input.tokenizer} --out-dir {params.out_dir}"
        )
