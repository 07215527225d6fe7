-- Operations: the tamper-evident audit log and per-project webhooks with their delivery log.

-- One row per audited action. `seq` is contiguous: it is assigned under the lock on
-- audit_head's single row, which every writer (on every replica) takes first, so the chain
-- (prev_hash -> hash) has exactly one order. `detail` is JSON text, stored exactly as hashed.
CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    actor_kind    TEXT NOT NULL,
    source_ip     TEXT,
    action        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource      TEXT NOT NULL,
    project       TEXT,
    result        TEXT NOT NULL,
    detail        TEXT NOT NULL,
    request_id    TEXT,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_actor ON audit_log(actor, seq);
CREATE INDEX audit_log_project ON audit_log(project, seq);
CREATE INDEX audit_log_action ON audit_log(action, seq);

-- The chain's head (last seq and hash) and its anchor: the last record removed by a purge,
-- which the first remaining record must chain to.
CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    purged_seq  BIGINT NOT NULL,
    purged_hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, purged_seq, purged_hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE webhook_policies (
    id          INTEGER PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    secret      TEXT,
    -- JSON array of event types.
    events      TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

-- A delivery is one event for one policy; it is retried until delivered or out of attempts.
-- `lease_until` is the claim of the replica sending it.
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY,
    policy_id       BIGINT NOT NULL REFERENCES webhook_policies(id) ON DELETE CASCADE,
    event_type      TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    created_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_policy ON webhook_deliveries(policy_id, id);

CREATE TABLE webhook_attempts (
    delivery_id BIGINT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
