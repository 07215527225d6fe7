//! Cron schedules for garbage collection and retention, safe with many replicas.
//!
//! Every replica ticks; a schedule fires on the replica that wins a compare-and-set on the
//! schedule's "last fired" setting in the shared database, so each due time fires once.
//! The tick also resumes a GC run whose process died.

use std::str::FromStr;

use chrono::{TimeZone, Utc};
use kura_metadata::now_ms;

use crate::gc::GcRequest;
use crate::{Registry, Result};

/// Parses a cron expression: standard five fields (`min hour dom mon dow`) or six/seven with
/// seconds (and year) first. Times are UTC.
pub fn parse_schedule(expr: &str) -> std::result::Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// The first fire time strictly after `after_ms`.
pub fn next_after(schedule: &cron::Schedule, after_ms: i64) -> Option<i64> {
    let at = Utc.timestamp_millis_opt(after_ms).single()?;
    schedule.after(&at).next().map(|t| t.timestamp_millis())
}

impl Registry {
    /// One scheduler tick (the server calls it every few seconds).
    pub async fn schedule_tick(&self) -> Result<()> {
        if let Some(expr) = self.inner.config.gc.schedule.clone()
            && self.claim_due("schedule.gc", &expr).await?
        {
            match self.start_gc(GcRequest::default(), "schedule").await {
                Ok(id) => tracing::info!(run = id, "scheduled garbage collection started"),
                Err(e) => tracing::warn!(error = %e, "scheduled garbage collection not started"),
            }
        }
        for policy in self.inner.meta.scheduled_retention_policies().await? {
            let Some(expr) = policy.schedule.as_deref() else {
                continue;
            };
            let key = format!("schedule.retention.{}", policy.project);
            if self.claim_due(&key, expr).await? {
                let this = self.clone();
                let project = policy.project.clone();
                tokio::spawn(async move {
                    match this.run_retention(&project, false, "schedule").await {
                        Ok(run) => {
                            tracing::info!(run = run.id, %project, "scheduled retention ran")
                        }
                        Err(e) => {
                            tracing::warn!(%project, error = %e, "scheduled retention failed")
                        }
                    }
                });
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.resume_stale_gc().await {
                tracing::warn!(error = %e, "could not resume garbage collection");
            }
        });
        Ok(())
    }

    /// True on exactly one replica when the schedule under `key` is due.
    async fn claim_due(&self, key: &str, expr: &str) -> Result<bool> {
        let schedule = match parse_schedule(expr) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%key, error = %e, "ignoring schedule");
                return Ok(false);
            }
        };
        let now = now_ms();
        let meta = &self.inner.meta;
        let Some(last) = meta.schedule_mark(key).await? else {
            // First sight of this schedule: count from now (no catch-up of past times).
            meta.compare_and_set_setting(key, None, &now.to_string())
                .await?;
            return Ok(false);
        };
        let last_ms: i64 = last.parse().unwrap_or(now);
        match next_after(&schedule, last_ms) {
            Some(next) if next <= now => Ok(meta
                .compare_and_set_setting(key, Some(&last), &now.to_string())
                .await?),
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions() {
        let s = parse_schedule("30 3 * * *").unwrap();
        let base = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let next = next_after(&s, base).unwrap();
        assert_eq!(
            next,
            Utc.with_ymd_and_hms(2026, 1, 1, 3, 30, 0)
                .unwrap()
                .timestamp_millis()
        );
        let s = parse_schedule("*/10 * * * * *").unwrap();
        assert_eq!(next_after(&s, base).unwrap(), base + 10_000);
        assert!(parse_schedule("not cron").is_err());
    }
}
