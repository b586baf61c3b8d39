//! Retention tests. Every time zone is a POSIX TZ string, so nothing depends on the
//! machine's zone or its tz database.

use super::*;
use crate::backend::Backend;
use jiff::civil::DateTime;

/// New York: UTC-5, DST (UTC-4) from the 2nd Sunday of March to the 1st Sunday of November.
fn new_york() -> TimeZone {
    TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap()
}

/// Berlin: UTC+1, DST (UTC+2) from the last Sunday of March to the last Sunday of October.
fn berlin() -> TimeZone {
    TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
}

/// The instant of local wall-clock time `local` in `tz` (the earlier one when ambiguous).
fn at(tz: &TimeZone, local: &str) -> Timestamp {
    local.parse::<DateTime>().unwrap().to_zoned_datetime(tz.clone()).unwrap().timestamp()
}

fn snap(id: &str, kind: Kind, created_at: Timestamp, pinned: bool) -> SnapshotMeta {
    SnapshotMeta {
        id: id.into(),
        kind,
        label: None,
        created_at,
        local_day: created_at.to_zoned_datetime(TimeZone::UTC).date(),
        pinned,
        backend: Backend::Copy,
        path: id.into(),
        size_bytes: 0,
        artifacts: 0,
        schema_version: 1,
        machina_version: "test".into(),
    }
}

fn daily(keep_scheduled: usize, keep_manual: usize) -> RetentionPolicy {
    RetentionPolicy { cadence: Cadence::Daily, keep_scheduled, keep_manual }
}

fn utc_day(t: Timestamp) -> Date {
    t.to_zoned_datetime(TimeZone::UTC).date()
}

#[test]
fn a_new_local_day_is_due_even_within_the_same_utc_day() {
    let tz = berlin(); // UTC+1 in January
    let made = at(&tz, "2026-01-10T23:59");
    let now = at(&tz, "2026-01-11T00:01");
    assert_eq!(utc_day(made), utc_day(now), "a UTC-day policy would wrongly skip this run");
    let d = retention(&daily(5, 10), &[snap("a", Kind::Scheduled, made, false)], now, &tz);
    assert!(d.create_scheduled);
    assert_eq!(d.satisfied_by, None);
}

#[test]
fn the_same_local_day_is_not_due_even_across_utc_days() {
    let tz = new_york(); // UTC-5 in January
    let made = at(&tz, "2026-01-10T18:00");
    let now = at(&tz, "2026-01-10T23:59");
    assert_ne!(utc_day(made), utc_day(now), "a UTC-day policy would wrongly take a second one");
    let d = retention(&daily(5, 10), &[snap("a", Kind::Scheduled, made, false)], now, &tz);
    assert!(!d.create_scheduled);
    assert_eq!(d.satisfied_by.as_deref(), Some("a"));
    // One minute past local midnight it is due again.
    assert!(
        retention(&daily(5, 10), &[snap("a", Kind::Scheduled, made, false)], at(&tz, "2026-01-11T00:01"), &tz)
            .create_scheduled
    );
}

#[test]
fn the_25_hour_fall_back_day_gets_one_snapshot() {
    let tz = new_york(); // 2026-11-01: 02:00 EDT becomes 01:00 EST
    let made = at(&tz, "2026-11-01T00:05");
    let late = at(&tz, "2026-11-01T23:55");
    assert!(late.duration_since(made).as_hours() >= 24, "more than 24 h pass within this one local day");
    let existing = [snap("a", Kind::Scheduled, made, false)];
    assert!(!retention(&daily(5, 10), &existing, late, &tz).create_scheduled);
    assert!(retention(&daily(5, 10), &existing, at(&tz, "2026-11-02T00:01"), &tz).create_scheduled);

    // 01:30 happens twice: the second one (EST) is still the same day.
    let first = at(&tz, "2026-11-01T01:30");
    let second = first + jiff::SignedDuration::from_hours(1);
    assert_eq!(second.to_zoned_datetime(tz.clone()).datetime(), first.to_zoned_datetime(tz.clone()).datetime());
    assert!(!retention(&daily(5, 10), &[snap("b", Kind::Scheduled, first, false)], second, &tz).create_scheduled);
}

#[test]
fn the_23_hour_spring_forward_day_ends_at_local_midnight() {
    let tz = new_york(); // 2026-03-08: 02:00 EST becomes 03:00 EDT
    let made = at(&tz, "2026-03-08T00:30");
    let next = at(&tz, "2026-03-09T00:10");
    assert!(next.duration_since(made).as_hours() < 23, "less than a day of hours has passed");
    let d = retention(&daily(5, 10), &[snap("a", Kind::Scheduled, made, false)], next, &tz);
    assert!(d.create_scheduled, "a new local day is due however few hours have passed");
}

#[test]
fn a_machine_off_for_a_week_catches_up_with_one_snapshot() {
    let tz = berlin();
    let policy = daily(5, 10);
    let mut existing: Vec<SnapshotMeta> = (1..=5)
        .map(|d| snap(&format!("2026-06-0{d}"), Kind::Scheduled, at(&tz, &format!("2026-06-0{d}T03:00")), false))
        .collect();
    // Off from the 6th to the 11th; on the 12th the timer fires (Persistent=) and then hourly.
    let mut created = 0;
    for hour in 9..24 {
        let now = at(&tz, &format!("2026-06-12T{hour:02}:00"));
        let d = retention(&policy, &existing, now, &tz);
        if d.create_scheduled {
            created += 1;
            existing.push(snap("2026-06-12", Kind::Scheduled, now, false));
            let after = retention(&policy, &existing, now, &tz);
            assert!(!after.create_scheduled);
            assert_eq!(after.prune, ["2026-06-01"], "keep the newest 5: the oldest goes");
            existing.retain(|m| !after.prune.contains(&m.id));
        }
    }
    assert_eq!(created, 1, "one snapshot for the missed week, not seven");
    assert_eq!(existing.len(), 5);
}

#[test]
fn keeps_the_newest_five_scheduled_and_prunes_oldest_first() {
    let tz = TimeZone::UTC;
    let existing: Vec<SnapshotMeta> = (1..=8)
        .rev() // the input order does not matter
        .map(|d| snap(&format!("s{d}"), Kind::Scheduled, at(&tz, &format!("2026-02-0{d}T12:00")), false))
        .collect();
    let d = retention(&daily(5, 10), &existing, at(&tz, "2026-02-08T13:00"), &tz);
    assert_eq!(d.prune, ["s1", "s2", "s3"]);
    assert!(!d.create_scheduled);
    assert_eq!(d.satisfied_by.as_deref(), Some("s8"));
}

#[test]
fn pinned_and_manual_snapshots_are_counted_and_kept_separately() {
    let tz = TimeZone::UTC;
    let day = |d: u32| at(&tz, &format!("2026-04-{d:02}T12:00"));
    let mut existing = Vec::new();
    // 7 scheduled, the 2 oldest pinned: 5 unpinned left, nothing to prune.
    for d in 1..=7 {
        existing.push(snap(&format!("s{d}"), Kind::Scheduled, day(d), d <= 2));
    }
    // 12 manual (the oldest pinned) and 1 pre-restore: 12 unpinned, keep 10.
    for d in 1..=12 {
        existing.push(snap(&format!("m{d:02}"), Kind::Manual, day(d) + jiff::SignedDuration::from_mins(1), d == 1));
    }
    existing.push(snap("r1", Kind::PreRestore, day(13), false));
    let now = at(&tz, "2026-04-13T18:00");
    let d = retention(&daily(5, 10), &existing, now, &tz);
    assert_eq!(d.prune, ["m02", "m03"], "the pinned m01 is not counted; s* are not touched by manual ones");
    assert!(d.create_scheduled, "manual and pre-restore snapshots made today do not count as the scheduled one");

    // Pinned scheduled snapshots are never pruned, however many newer ones there are.
    let many: Vec<SnapshotMeta> =
        (1..=20).map(|d| snap(&format!("x{d:02}"), Kind::Scheduled, day(d), d == 1)).collect();
    let d = retention(&daily(5, 10), &many, at(&tz, "2026-04-20T18:00"), &tz);
    assert_eq!(d.prune.len(), 14);
    assert!(!d.prune.contains(&"x01".to_string()));
}

#[test]
fn a_pinned_scheduled_snapshot_of_today_still_satisfies_today() {
    let tz = berlin();
    let made = at(&tz, "2026-05-05T03:00");
    let d = retention(&daily(5, 10), &[snap("p", Kind::Scheduled, made, true)], at(&tz, "2026-05-05T20:00"), &tz);
    assert!(!d.create_scheduled);
}

#[test]
fn weekly_cadence_counts_local_iso_weeks() {
    let tz = berlin();
    let policy = RetentionPolicy { cadence: Cadence::Weekly, keep_scheduled: 5, keep_manual: 10 };
    let monday = at(&tz, "2026-06-08T00:30"); // a Monday
    let existing = [snap("w", Kind::Scheduled, monday, false)];
    assert!(!retention(&policy, &existing, at(&tz, "2026-06-14T23:59"), &tz).create_scheduled, "same week (Sunday)");
    assert!(retention(&policy, &existing, at(&tz, "2026-06-15T00:00"), &tz).create_scheduled, "next Monday");
}

#[test]
fn nothing_yet_means_due_and_nothing_to_prune() {
    let d = retention(&daily(5, 10), &[], Timestamp::UNIX_EPOCH, &TimeZone::UTC);
    assert_eq!(d, Decision { create_scheduled: true, satisfied_by: None, prune: vec![] });
}
