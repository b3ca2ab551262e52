"""Object storage under every stage; a leaf that imports nothing else of the project.

Modules:
- ``fs``: fsspec URLs, listings, reads with their SHA-256, the one atomic writer
- ``exclusive``: create-if-absent writes on local disk and S3
"""
