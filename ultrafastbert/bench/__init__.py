"""Benchmarks: timing methodology, the layer benchmark and the model benchmark."""
