"""Faithfulness and localisation metrics: small functions on batched tensors, on any device."""
