"""Benchmarks after training: generation tasks on the cluster, preflight checks, MT-Bench and AlpacaEval scoring."""
