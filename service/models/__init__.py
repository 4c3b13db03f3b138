"""Datasets, model architectures and model loading."""
