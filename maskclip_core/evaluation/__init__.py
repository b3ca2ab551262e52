"""Scoring labels against people's: ground truth matched to dataset images, and reviewed labels.

Modules:
- ``ground_truth``: COCO JSON / PNG masks matched to dataset images
- ``reviewed``: the current pseudo-labels scored against the reviewed table
"""
