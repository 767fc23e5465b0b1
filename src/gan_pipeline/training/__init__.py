"""Losses, the GAN step and the training loop (the classifier's training lives in training.classifier)."""
