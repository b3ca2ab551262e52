"""Training a student from the dataset: the training set it reads, and the rounds of pseudo-label
supervision and self-training."""
