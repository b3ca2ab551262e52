"""Training a student from the dataset: parameters, plan (the run's identity), data (the training set),
embeddings (the teacher's text classifier), teacher_scores (the baseline), run (the rounds)."""
