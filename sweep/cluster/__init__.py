"""Cluster work before the trials: joining Ray, per-node checks (shared storage), the shared reference pass."""
