"""gan-pipeline: DVC stages (stages/*.py) over this package, which trains, samples and scores image GANs."""
