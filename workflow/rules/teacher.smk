# MDLM teacher pretraining (resumable; DDP through torchrun), or a released teacher imported as is.
from didi.config import imports_teacher

if imports_teacher(config):

    # The released MDLM/DUO teacher used AS IS (teacher.init_from, converted by `didi convert`;
    # teacher.finetune_steps: 0, presets/paper-released-teacher.yaml): no training job. The rule keeps the name
    # train_teacher (other rules read rules.train_teacher's outputs) but runs `didi import-teacher`: the converted
    # model is checked against the configured DiT and tokenizer and written where a trained teacher goes.
    rule train_teacher:
        input:
            released=config["teacher"]["init_from"],
            tokenizer=rules.tokenizer.output,
        output:
            ema=directory(f"{R}/teacher/ema"),
            raw=directory(f"{R}/teacher/raw"),
            metrics=f"{R}/teacher/metrics.json",
        log:
            f"{R}/logs/import_teacher.log",
        benchmark:
            f"{R}/benchmarks/import_teacher.tsv"
        conda:
            ENVS
        threads: 1
        resources:
            mem_mb=config["resources"]["mem_mb"],
            runtime=runtime("light"),
        params:
            rerun_on=relevant("import_teacher"),
            config_json=command_config("import_teacher"),
            out_dir=parent_of("metrics"),
        shell:
            logged(
                "{DIDI} import-teacher --config-json {params.config_json:q} --tokenizer {input.tokenizer}"
                " --out-dir {params.out_dir}"
            )

else:

    # Pretraining, or with teacher.init_from and teacher.finetune_steps N a fine-tune of N steps from the released
    # teacher (didi.config.teacher_steps): never teacher.steps then.
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
        priority: 10  # the head of the critical path: every distillation waits for it
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
