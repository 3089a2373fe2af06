"""I/O: where data lives (local paths and object-store URLs), atomic writes and locks, the record formats, streams."""
