"""The eight training-free segmentation benchmarks, application code above the stages: it builds teachers and
students and scores them with the leaf ``segmentation_metrics``.

Modules:
- ``suites``: the suites in mmsegmentation's layout and their class tables
- ``protocols``: each method's protocol as its repository configures it (keyword entries)
- ``scoring``: the parameters, the labelers, and a labeler scored on the suites
"""
