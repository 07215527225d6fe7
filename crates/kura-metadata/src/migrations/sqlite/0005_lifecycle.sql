-- Storage lifecycle: garbage collection, quotas, tag history, retention and immutability.

-- Every statement that makes something depend on a blob, a repository link or a manifest
-- updates that row's touched_at in the same transaction; garbage collection deletes a row only
-- in a statement that requires touched_at older than its grace period. Whichever commits
-- first wins cleanly: GC sees the new version and skips the row, or the dependant finds the
-- row gone and reports it unknown (ARCHITECTURE.md, "Garbage collection").
ALTER TABLE blobs ADD COLUMN touched_at BIGINT NOT NULL DEFAULT 0;
UPDATE blobs SET touched_at = created_at;
CREATE INDEX blobs_storage_key ON blobs(storage_key);
ALTER TABLE repository_blobs ADD COLUMN touched_at BIGINT NOT NULL DEFAULT 0;
UPDATE repository_blobs SET touched_at = created_at;
ALTER TABLE manifests ADD COLUMN touched_at BIGINT NOT NULL DEFAULT 0;
UPDATE manifests SET touched_at = created_at;

-- Deleted manifests are kept here (with what they reference) for a grace period: their tags
-- can be restored, and while they are here their blobs and children stay.
CREATE TABLE deleted_manifests (
    repository_id  BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest         TEXT NOT NULL,
    media_type     TEXT NOT NULL,
    size           BIGINT NOT NULL,
    payload        BLOB NOT NULL,
    artifact_type  TEXT,
    subject_digest TEXT,
    annotations    TEXT,
    created_at     BIGINT NOT NULL,
    deleted_at     BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX deleted_manifests_at ON deleted_manifests(deleted_at);
CREATE TABLE deleted_manifest_references (
    repository_id   BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    child_digest    TEXT NOT NULL,
    child_kind      TEXT NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, child_digest),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES deleted_manifests(repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX deleted_manifest_references_child
    ON deleted_manifest_references(repository_id, child_digest);

-- Every tag move: digest NULL = the tag was removed.
CREATE TABLE tag_history (
    id              INTEGER PRIMARY KEY,
    repository_id   BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    tag             TEXT NOT NULL,
    digest          TEXT,
    previous_digest TEXT,
    changed_at      BIGINT NOT NULL
);
CREATE INDEX tag_history_tag ON tag_history(repository_id, tag, id);

-- Quotas. project_blobs holds each distinct blob a project's repositories link, with the
-- number of links; project_usage sums it. Both are maintained by triggers on
-- repository_blobs, in the transaction that changes a link, so no code path can forget them.
ALTER TABLE projects ADD COLUMN storage_limit BIGINT;
CREATE TABLE project_blobs (
    project TEXT NOT NULL,
    digest  TEXT NOT NULL,
    size    BIGINT NOT NULL,
    links   BIGINT NOT NULL,
    PRIMARY KEY (project, digest)
);
CREATE TABLE project_usage (
    project TEXT PRIMARY KEY,
    bytes   BIGINT NOT NULL,
    blobs   BIGINT NOT NULL
);
INSERT INTO project_blobs (project, digest, size, links)
    SELECT r.project, rb.digest, b.size, COUNT(*) FROM repository_blobs rb
    JOIN repositories r ON r.id = rb.repository_id JOIN blobs b ON b.digest = rb.digest
    GROUP BY r.project, rb.digest, b.size;
INSERT INTO project_usage (project, bytes, blobs)
    SELECT project, SUM(size), COUNT(*) FROM project_blobs GROUP BY project;

CREATE TRIGGER repository_blobs_counted AFTER INSERT ON repository_blobs BEGIN
    INSERT OR IGNORE INTO project_blobs (project, digest, size, links)
        SELECT r.project, NEW.digest, b.size, 0 FROM repositories r, blobs b
        WHERE r.id = NEW.repository_id AND b.digest = NEW.digest;
    UPDATE project_blobs SET links = links + 1
        WHERE project = (SELECT project FROM repositories WHERE id = NEW.repository_id)
        AND digest = NEW.digest;
END;
CREATE TRIGGER repository_blobs_uncounted AFTER DELETE ON repository_blobs BEGIN
    UPDATE project_blobs SET links = links - 1
        WHERE project = (SELECT project FROM repositories WHERE id = OLD.repository_id)
        AND digest = OLD.digest;
    DELETE FROM project_blobs
        WHERE project = (SELECT project FROM repositories WHERE id = OLD.repository_id)
        AND digest = OLD.digest AND links <= 0;
END;
CREATE TRIGGER project_blobs_added AFTER INSERT ON project_blobs BEGIN
    INSERT INTO project_usage (project, bytes, blobs) VALUES (NEW.project, NEW.size, 1)
        ON CONFLICT (project) DO UPDATE SET bytes = bytes + excluded.bytes, blobs = blobs + 1;
END;
CREATE TRIGGER project_blobs_removed AFTER DELETE ON project_blobs BEGIN
    UPDATE project_usage SET bytes = bytes - OLD.size, blobs = blobs - 1
        WHERE project = OLD.project;
END;

-- Per-project policies.
CREATE TABLE immutability_rules (
    id           INTEGER PRIMARY KEY,
    project      TEXT NOT NULL,
    repositories TEXT NOT NULL,
    tags         TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX immutability_rules_project ON immutability_rules(project);
CREATE TABLE retention_policies (
    project    TEXT PRIMARY KEY,
    -- JSON: {"rules": [...]} (kura-registry::retention::RetentionPolicy).
    policy     TEXT NOT NULL,
    -- Cron expression, or NULL for on-demand only.
    schedule   TEXT,
    updated_at BIGINT NOT NULL
);

-- Runs of garbage collection and retention: progress (phase + cursor) is committed with each
-- batch, so a run interrupted by a crash resumes where it stopped.
CREATE TABLE lifecycle_runs (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    project      TEXT,
    trigger      TEXT NOT NULL,
    dry_run      BOOLEAN NOT NULL,
    params       TEXT NOT NULL,
    status       TEXT NOT NULL,
    phase        TEXT NOT NULL,
    cursor       TEXT NOT NULL DEFAULT '',
    result       TEXT NOT NULL,
    error        TEXT,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    finished_at  BIGINT
);
CREATE INDEX lifecycle_runs_kind ON lifecycle_runs(kind, id);

-- Bytes whose metadata GC has removed but which storage still holds: written in the batch
-- transaction, removed once the storage delete succeeded.
CREATE TABLE pending_blob_deletions (
    storage_key TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    queued_at   BIGINT NOT NULL
);
