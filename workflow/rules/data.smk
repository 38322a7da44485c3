# Corpus -> tokenizer -> packed token blocks.


rule corpus:
    output:
        train=f"{R}/corpus/train.parquet",
        validation=f"{R}/corpus/validation.parquet",
        stats=f"{R}/corpus/stats.json",
    log:
        f"{R}/logs/corpus.log",
    benchmark:
        f"{R}/benchmarks/corpus.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("light"),
    params:
        rerun_on=relevant("corpus"),
        config_json=command_config("corpus"),
        out_dir=parent_of("stats"),
    shell:
        logged(
            "{DIDI} corpus --config-json {params.config_json:q} --out-dir {params.out_dir}"
        )


# Only a trained BPE reads the corpus: a pretrained tokenizer (tokenizer.pretrained, e.g. GPT-2) never waits for
# (at paper scale: downloads) the whole corpus.
rule tokenizer:
    input:
        [] if config["tokenizer"]["pretrained"] else rules.corpus.output.train,
    output:
        directory(f"{R}/tokenizer"),
    log:
        f"{R}/logs/tokenizer.log",
    benchmark:
        f"{R}/benchmarks/tokenizer.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("light"),
    params:
        rerun_on=relevant("tokenizer"),
        config_json=command_config("tokenizer"),
        # the corpus directory (not read, and not built, with a pretrained tokenizer)
        corpus_dir=lambda wildcards, input: os.path.dirname(
            input[0] if len(input) else rules.corpus.output.train
        ),
    shell:
        logged(
            "{DIDI} tokenizer --config-json {params.config_json:q} --corpus-dir {params.corpus_dir}"
            " --out-dir {output}"
        )


rule tokenize:
    input:
        split=f"{R}/corpus/{{split}}.parquet",
        tokenizer=rules.tokenizer.output,
    output:
        blocks=f"{R}/tokens/{{split}}.npy",
        stats=f"{R}/tokens/{{split}}.json",
    log:
        f"{R}/logs/tokenize_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/tokenize_{{split}}.tsv"
    conda:
        ENVS
    threads: config["data"]["num_proc"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("light"),
    params:
        rerun_on=relevant("tokenize"),
        config_json=command_config("tokenize"),
        corpus_dir=parent_of("split", "input"),
    shell:
        logged(
            "{DIDI} tokenize --config-json {params.config_json:q} --corpus-dir {params.corpus_dir}"
            " --tokenizer {input.tokenizer} --split {wildcards.split} --out {output.blocks}"
        )
