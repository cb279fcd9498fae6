"""Answer generation backends shared by the benchmarks: transformers (HF) and vLLM."""
