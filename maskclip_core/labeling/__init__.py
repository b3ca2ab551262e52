"""One batch of images through a labeler: decode, label, filter by confidence, encode COCO RLE, write.

registry (labeler kinds, ``LabelerSpec``, per-process loading), config_hash (config hash, labeling ids, part
names), plan (what a run hands its batches, what they count), planning (listing -> numbered batches), decode,
filter, annotations (COCO RLE), batch (one batch to rows), thumbnails, known_content (the per-process index of
done content), write (a batch into the dataset), report (the run summary), overlays, segment_files."""
