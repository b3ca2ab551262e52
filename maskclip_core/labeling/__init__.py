"""One batch of images through a labeler: decode, label, filter by confidence, encode COCO RLE, write.

registry (labeler kinds, ``LabelerParameters``, per-process loading), config_hash (config hash, labeling ids, part
names), plan (what a run hands its batches, what they count), planning (listing -> numbered batches), decode,
filter, annotations (label maps -> COCO RLE records; the decoder is ``dataset.rle``), batch (one batch to rows),
memory_budget (decoded pixels a worker holds), thumbnails, known_content (the per-process index of done content),
write (a batch into the dataset), report (the run summary), overlays, segment_files."""
