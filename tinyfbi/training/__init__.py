"""Training: run planning, the one loop both backends share, the NumPy learner, the teacher cache."""
