"""The sweep's side of MT-Bench: config, preflight, scoring of selected trials."""
