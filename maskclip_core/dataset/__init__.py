"""The dataset: the Parquet tables a labeling run writes and the readers over them.

``LabelDataset`` (``label_dataset``) is a facade over the images, annotations and categories tables; each of
its jobs is one module below it (parts, category_claims, writes, current_rows, known_index, compaction, reads).
Storage (fsspec helpers, the one atomic writer, create-if-absent writes) is the layer below, ``storage``.

Modules:
- ``schema``: every table's Arrow schema, coded values, column names per format version
- ``manifest``: ``_maskclip_dataset.json``, the format version
- ``ids``: the id scheme (image and annotation ids the same on every run)
- ``rle``: the annotation codec, segmentations to masks and label maps
- ``label_dataset``: ``LabelDataset``, the facade over the images / annotations / categories tables
- ``parts``: ``DatasetParts``, the part files (location, format version, listing, checking, reading, writing)
- ``category_claims``: the categories table, each id claimed by one create-if-absent part
- ``writes``: a batch's rows checked, then its annotations part, then its images part (the commit record)
- ``current_rows``: the rule that picks the current images row, its Arrow and streaming strategies
- ``known_index``: the known-image index of a config (contents and sources not to label again)
- ``compaction``: small images parts merged into large ones, no row changed
- ``reads``: current images rows, history, annotations of current labelings, label maps
- ``records``: ``ExportImage`` / ``ReviewedImage`` and selection filters
- ``reader``: records streamed for the exports
- ``reviews``: the reviewed table
- ``labelings``: what produced the labels of one config hash
- ``metrics_table``: scores of the teacher and the student per round
- ``digests``: compact sets of SHA-256 and source digests
- ``parquet``: pyarrow's view of an fsspec filesystem, part bytes, a table folder as a dataset
- ``integrity``: a damaged part refused in one line (``DatasetDamaged``)
- ``check``: ``maskclip dataset check [--repair]``, quarantine
- ``residue``: what killed runs leave (stale temporary files, never-committed parts), told apart from damage
- ``source_sync``: files a complete listing no longer shows marked gone
- ``lease``: one writing run at a time, with expiry
"""
