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
        # the synthetic source draws sequences of data.seq_len - 2 states
        cfg=cfg_json("seed", "corpus", *(["data"] if SYNTHETIC else [])),
        out_dir=parent_of("stats"),
    shell:
        "didi corpus --config-json {params.cfg:q} --out-dir {params.out_dir} > {log} 2>&1"


rule tokenizer:
    input:
        train=rules.corpus.output.train,
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
        cfg=cfg_json("seed", "tokenizer", *(["corpus"] if SYNTHETIC else [])),
        corpus_dir=parent_of("train", "input"),
    shell:
        "didi tokenizer --config-json {params.cfg:q} --corpus-dir {params.corpus_dir}"
        " --out-dir {output} > {log} 2>&1"


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
        cfg=cfg_json("data"),
        corpus_dir=parent_of("split", "input"),
    shell:
        "didi tokenize --config-json {params.cfg:q} --corpus-dir {params.corpus_dir}"
        " --tokenizer {input.tokenizer} --split {wildcards.split} --out {output.blocks} > {log} 2>&1"
