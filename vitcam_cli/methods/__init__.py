"""Saliency methods: each maps a batch of images and target classes to raw (B, T, rows, cols) maps."""
