-- When each manifest was last pulled (epoch ms), recorded in batches off the request path.
ALTER TABLE manifests ADD COLUMN last_pulled_at BIGINT;
