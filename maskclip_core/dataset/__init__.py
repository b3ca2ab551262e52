"""The dataset: the Parquet tables a labeling run writes and the readers over them.

schema (every table's schema), manifest (the format version), label_dataset (``LabelDataset``: the images,
annotations and categories tables), records (``ExportImage`` / ``ReviewedImage`` and filters), reader
(records streamed for exports), reviews, labelings, metrics, digests, parquet and fs (fsspec helpers, the one
atomic writer)."""
