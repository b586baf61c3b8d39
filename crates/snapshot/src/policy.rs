//! Retention: whether a scheduled snapshot is due and which snapshots to delete, as a pure
//! function of the snapshots, the time and the time zone (tests inject both).
//!
//! - A scheduled snapshot is due unless one was already made in the current period: the
//!   local calendar day (daily) or local ISO week (weekly) of `now` in the configured time
//!   zone. So a day is a calendar day, 23 or 25 hours long on DST change days, and a machine
//!   that was off for a week gets one snapshot on its next run, not one per missed day.
//! - Unpinned scheduled snapshots beyond the newest `keep_scheduled` are deleted, and so are
//!   unpinned manual and pre-restore snapshots (counted together) beyond the newest `keep_manual`.
//! - Pinned snapshots are counted in neither group and never deleted.
//!
//! Periods are computed from each snapshot's `created_at` in the zone given, not from its
//! stored `local_day`, so the answer follows the configured zone even if it changed.

use crate::config::{Cadence, RetentionPolicy};
use crate::meta::{Kind, SnapshotMeta};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// What retention decided.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Decision {
    /// A scheduled snapshot is due now.
    pub create_scheduled: bool,
    /// When it is not due: the scheduled snapshot already made in this period.
    pub satisfied_by: Option<String>,
    /// Ids to delete, oldest first.
    pub prune: Vec<String>,
}

/// The local period (day, or Monday of the ISO week) that `at` falls in.
pub fn period_of(cadence: Cadence, at: Timestamp, tz: &TimeZone) -> Date {
    let day = at.to_zoned_datetime(tz.clone()).date();
    match cadence {
        Cadence::Daily => day,
        Cadence::Weekly => {
            let back = i64::from(day.weekday().to_monday_zero_offset());
            day.saturating_sub(jiff::SignedDuration::from_hours(24 * back))
        }
    }
}

/// Decide retention for `existing` snapshots at `now` in `tz`. Pure: no clock, no files.
///
/// `prune` is about `existing` as given: after creating the due snapshot, decide again
/// with it included (that is what [`Snapshots::run_scheduled`](crate::Snapshots::run_scheduled) does).
pub fn retention(policy: &RetentionPolicy, existing: &[SnapshotMeta], now: Timestamp, tz: &TimeZone) -> Decision {
    let current = period_of(policy.cadence, now, tz);
    let satisfied_by = existing
        .iter()
        .filter(|m| m.kind == Kind::Scheduled && period_of(policy.cadence, m.created_at, tz) == current)
        .max_by_key(|m| m.created_at)
        .map(|m| m.id.clone());

    let mut newest_first: Vec<&SnapshotMeta> = existing.iter().filter(|m| !m.pinned).collect();
    newest_first.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let scheduled = newest_first.iter().filter(|m| m.kind == Kind::Scheduled).skip(policy.keep_scheduled);
    let manual = newest_first.iter().filter(|m| m.kind != Kind::Scheduled).skip(policy.keep_manual);
    let mut prune: Vec<&SnapshotMeta> = scheduled.chain(manual).copied().collect();
    prune.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));

    Decision {
        create_scheduled: satisfied_by.is_none(),
        satisfied_by,
        prune: prune.into_iter().map(|m| m.id.clone()).collect(),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
