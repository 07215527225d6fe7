-- Never holds a row. Used by the SQLite batches only; kept here so both schemas match.
CREATE TABLE commit_checks (
    storage_limit     INTEGER NOT NULL DEFAULT 0,
    upload_changed    INTEGER NOT NULL DEFAULT 0,
    missing_reference INTEGER NOT NULL DEFAULT 0,
    tag_immutable     INTEGER NOT NULL DEFAULT 0
);
