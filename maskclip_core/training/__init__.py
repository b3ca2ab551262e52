"""Training a MaskCLIP+ student from the dataset (without Prefect).

Modules:
- ``parameters``: the run's parameter models (CLIP, student, schedule, data, how the run is carried out)
- ``plan``: the run's identity (teacher labeling, classes, settings, data fingerprint)
- ``data``: the student's training set over the dataset
- ``embeddings``: the teacher's text embeddings, the student's frozen classifier
- ``teacher_scores``: the teacher's pseudo-labels scored (the baseline)
- ``run``: the rounds of supervision and self-training, with checkpoints
"""
