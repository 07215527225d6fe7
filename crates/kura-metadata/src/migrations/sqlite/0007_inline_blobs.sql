-- The bytes of small blobs, kept in the metadata database instead of blob storage (their
-- `blobs.storage_key` is ''): a push of one is two rows in the metadata commit, with no file
-- or object of its own (BENCHMARKS.md, session 10). A table of its own keeps `blobs` narrow
-- for the lookups and scans that never need the bytes.
CREATE TABLE blob_contents (
    digest  TEXT PRIMARY KEY REFERENCES blobs(digest) ON DELETE CASCADE,
    content BLOB NOT NULL
);
