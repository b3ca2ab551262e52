"""The eight training-free segmentation benchmarks: suites in mmsegmentation's layout (``suites``), each
method's protocol as its repository configures it (``protocols``), and a labeler scored on them (``scoring``).
Application code above the stages: it builds teachers and students and scores them with the leaf
``segmentation_metrics``."""
