"""The claims report: the proposal's expected results tested against a sweep's cells."""
