"""MT-Bench (Zheng et al. 2023): config, data, judge prompts, the local judge, the pipeline and its CLI."""
