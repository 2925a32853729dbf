"""Training side of anysat-serve: datasets, pretraining, fine-tuning and probing (depends on ``model``)."""
