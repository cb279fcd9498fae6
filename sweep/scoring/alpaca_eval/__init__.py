"""The sweep's side of AlpacaEval 2.0: config, preflight, scoring of selected trials."""
