"""I/O: where data lives and how it is read and written. No torch, no models, no stage.

  locations   paths that may be object-store URLs (s3://, gs://, ...), the spool, output-in-input checks
  objects     an object store seen as paths (fsspec), with literal keys and one-line failures
  storage     temp-fsync-rename writes, the job lock (local and on a bucket)
  walk        finding a corpus's input files (what is skipped, and why)
  records     reading records from JSONL (plain, gzip, zstd) and parquet; bad records as values
  exact_json  JSON with exact numbers, and line surgery on raw JSONL (fields added or dropped in place)
  writers     writing records in the input's format
  streams     a background reader (read-ahead) and chunking
"""
