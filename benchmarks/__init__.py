"""Latency benchmarks: decode step, prefill, VQ decode, with the transformers baseline and the bandwidth floor."""
