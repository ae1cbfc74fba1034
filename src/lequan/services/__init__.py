"""Use cases: one module per capability, one transaction per call, primitives in, results out."""
