"""The dataset: the Parquet tables a labeling run writes (images, annotations, categories, labelings,
reviews, metrics), the fsspec helpers under them and the readers over them."""
