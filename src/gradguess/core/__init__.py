"""The guessing core: models, guesses, the method registry, estimators, metrics, optimizers, data."""
