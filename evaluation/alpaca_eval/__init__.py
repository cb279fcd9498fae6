"""AlpacaEval 2.0: config, data, pairwise judge, metrics (win rate, LC win rate), the pipeline and its CLI."""
