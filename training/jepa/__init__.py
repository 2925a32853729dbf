"""JEPA + contrastive pretraining (paper §3.2): masks, student, predictor, losses."""
