"""The teacher: CLIP loading, prompts and vocabulary, the text classifier, dense features (MaskCLIP and its
training-free successors), refinements, the sliding-window predictor and the labeler facade."""
