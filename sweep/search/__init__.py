"""Adaptive stability mapping (lattices, inference of unmeasured cells, the Tune searcher) and resume alignment."""
