"""Backends: the only modules that import transformer_lens or nnsight."""
