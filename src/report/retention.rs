//! Retention: keeping the store within its byte budget and age limit by removing whole reports,
//! oldest finished first — never a report still being written.
//!
//! What flows in: the [`RetentionPolicy`] (numbers; parsing `"2GiB"`/`"30d"` is the config
//! module's job) and, from the store, the oldest reports with their sizes. What flows out: the
//! ids to evict, in order ([`plan`], pure). The store applies the plan before each media write,
//! on a full disk, and whenever [`Store::enforce_retention`](super::Store::enforce_retention) is
//! called (the daemon does so on a timer).

use std::time::Duration;

use super::ReportId;

/// How much the store may keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Most bytes the store may take: media, HTML pages and the index together. `None`: no byte
    /// budget (a full disk still evicts).
    pub max_bytes: Option<u64>,
    /// Finished reports older than this are removed. `None`: kept until space runs out.
    pub max_age: Option<Duration>,
    /// Free space to leave on the file system for everything else on it (logs, engine caches);
    /// checked before each media write, and the target when a write hits a full disk.
    pub min_free_bytes: u64,
}

/// A report as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: ReportId,
    /// When the report began, ms since the Unix epoch.
    pub created_ms: i64,
    /// What removing it gives back: its media and its page.
    pub bytes: u64,
    /// Still being written: never evicted.
    pub open: bool,
}

/// The reports to evict, in order: every finished one older than `max_age` (relative to
/// `now_ms`), then further finished ones, oldest first, until at least `free_bytes` bytes are
/// freed. Ties in age go by id, so the order is total and repeatable.
pub fn plan(
    candidates: &[Candidate],
    now_ms: i64,
    max_age: Option<Duration>,
    free_bytes: u64,
) -> Vec<&Candidate> {
    let mut order: Vec<&Candidate> = candidates.iter().filter(|c| !c.open).collect();
    order.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    let cutoff =
        max_age.map(|age| now_ms.saturating_sub(age.as_millis().min(i64::MAX as u128) as i64));
    let mut freed = 0u64;
    order
        .into_iter()
        .take_while(|c| {
            let too_old = cutoff.is_some_and(|cut| c.created_ms < cut);
            let take = too_old || freed < free_bytes;
            if take {
                freed += c.bytes;
            }
            take
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, created_ms: i64, bytes: u64, open: bool) -> Candidate {
        Candidate {
            id: ReportId::parse(id).unwrap(),
            created_ms,
            bytes,
            open,
        }
    }

    fn ids(v: Vec<&Candidate>) -> Vec<&str> {
        v.into_iter().map(|c| c.id.as_str()).collect()
    }

    /// Oldest first; `b` and `c` share a millisecond.
    fn reports() -> Vec<Candidate> {
        vec![
            c("20261124T100003Z-0003", 3_000, 300, false),
            c("20261124T100001Z-000b", 1_000, 100, false),
            c("20261124T100001Z-000a", 1_000, 50, true),
            c("20261124T100001Z-000c", 1_000, 100, false),
            c("20261124T100004Z-0004", 4_000, 400, false),
        ]
    }

    #[test]
    fn frees_bytes_oldest_finished_first() {
        let r = reports();
        #[rustfmt::skip]
        let cases: &[(u64, &[&str])] = &[
            (0, &[]),
            (1, &["20261124T100001Z-000b"]),
            (100, &["20261124T100001Z-000b"]),
            (101, &["20261124T100001Z-000b", "20261124T100001Z-000c"]),
            (500, &["20261124T100001Z-000b", "20261124T100001Z-000c", "20261124T100003Z-0003"]),
            (u64::MAX, &["20261124T100001Z-000b", "20261124T100001Z-000c",
                         "20261124T100003Z-0003", "20261124T100004Z-0004"]),
        ];
        for (need, want) in cases {
            assert_eq!(ids(plan(&r, 10_000, None, *need)), *want, "freeing {need}");
        }
    }

    #[test]
    fn never_evicts_an_open_report() {
        let r = reports();
        let all = plan(&r, i64::MAX, Some(Duration::ZERO), u64::MAX);
        assert!(all.iter().all(|c| c.id.as_str() != "20261124T100001Z-000a"));
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn age_limit_evicts_everything_older_then_bytes_continue() {
        let r = reports();
        let age = Some(Duration::from_millis(7_500));
        // now 10.5 s: cutoff 3.0 s — reports begun before it go (not the one at exactly 3.0 s).
        assert_eq!(
            ids(plan(&r, 10_500, age, 0)),
            ["20261124T100001Z-000b", "20261124T100001Z-000c"]
        );
        // The age limit already frees 200 bytes; 250 needs one more.
        assert_eq!(
            ids(plan(&r, 10_500, age, 250)),
            [
                "20261124T100001Z-000b",
                "20261124T100001Z-000c",
                "20261124T100003Z-0003"
            ]
        );
        assert_eq!(
            ids(plan(&r, 10_500, Some(Duration::from_secs(3600)), 0)),
            [] as [&str; 0]
        );
    }
}
