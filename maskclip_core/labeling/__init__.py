"""Labeling a dataset: one batch of source files through a labeler, filtered and encoded, into the dataset.

Modules:
- ``registry``: labeler kinds (``LabelerParameters``) and their per-process loading
- ``config_hash``: the config hash, labeling ids and part names
- ``run_records``: a run's and a batch's small records (plan, planned / written / failed batch, counts)
- ``planning``: a streamed listing into numbered batches of new files
- ``decode``: image bytes to RGB, or a rejection reason
- ``device_decode``: batched nvJPEG decoding on CUDA
- ``memory_budget``: decoded-pixel bytes a worker process holds at once
- ``filter``: the confidence filter (ignore pixels, weak regions, rejected images)
- ``annotations``: label maps to COCO RLE annotation records (the decoder is ``dataset.rle``)
- ``batch``: one batch to rows (read, decode, label, filter, encode)
- ``known_content``: the per-process index of content already labeled
- ``thumbnails``: overlay JPEGs for reports
- ``write``: a batch into the dataset
- ``report``: the run summary (``RunSummary``) and its markdown
- ``report_images``: thumbnails a browser can show in the report
- ``overlays``: label PNGs, colour overlays, confidence maps
- ``segment_files``: label a few local files (``maskclip segment``)
"""
