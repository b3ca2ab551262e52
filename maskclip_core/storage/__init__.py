"""Object storage under every stage: fsspec URLs, reads with their SHA-256, the one atomic writer (``fs``) and
create-if-absent writes on local disk and S3 (``exclusive``). A leaf: it imports nothing else of the project."""
