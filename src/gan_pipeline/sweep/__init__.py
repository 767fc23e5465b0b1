"""Hyperparameter sweeps of one experiment on Ray Tune (python -m gan_pipeline.sweep --help)."""
