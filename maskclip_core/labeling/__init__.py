"""One batch of images through a labeler: decode, label, filter by confidence, encode COCO RLE, overlays and
the run report."""
