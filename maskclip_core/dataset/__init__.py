"""The dataset: the Parquet tables a labeling run writes and the readers over them.

schema (every table's schema), manifest (the format version), ids (the id scheme), rle (the annotation codec:
segmentations to masks and label maps), label_dataset (``LabelDataset``: the facade over the images,
annotations and categories tables, delegating to parts (part files: location, format version, listing,
checking, reading, writing), category_claims (the categories table and its exclusive id claims), writes (a
batch checked and committed), current_rows (the rule that picks the current images row, Arrow and streaming),
known_index (the known-image index), compaction (small images parts merged) and reads (current rows, history,
annotations, label maps)), records (``ExportImage`` / ``ReviewedImage`` and filters), reader (records streamed
for exports), reviews, labelings, metrics_table, digests and parquet; keeping it true: integrity (damaged
parts refused in one line), check (``maskclip dataset check --repair``), source_sync (files that left the
source marked gone) and lease (one writing run at a time). Storage (fsspec helpers, the one atomic writer,
create-if-absent writes) is the layer below, ``maskclip_core.storage``."""
