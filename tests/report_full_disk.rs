//! A full disk: the store on a real 2 MiB tmpfs (mounted by the test; needs root, as the
//! project's CI and dev machines run). No byte budget is set, so only the file system says
//! "full": writes fail with `DiskFull`, old reports are evicted, the retried write succeeds, and
//! the index and files stay consistent throughout and after a reopen.

mod common;

use std::path::Path;

use common::{assert_consistent, at, clip, frame, meta, Tmpfs};
use gemba::report::{
    ListFilter, ReportError, ReportId, ReportStats, ReportStatus, RetentionPolicy, Store, Trigger,
};

/// Runs a write, retrying after DiskFull as the daemon does; counts the full-disk events.
fn retry<T>(
    what: &str,
    dir: &Path,
    full: &mut Vec<(u64, usize)>,
    mut f: impl FnMut() -> Result<T, ReportError>,
) -> T {
    for _ in 0..5 {
        match f() {
            Ok(v) => return v,
            Err(e @ ReportError::DiskFull { .. }) => {
                eprintln!("{what}: {e}");
                let ReportError::DiskFull {
                    path,
                    needed,
                    evicted,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert!(
                    path.starts_with(dir),
                    "{what}: DiskFull names {}",
                    path.display()
                );
                assert!(evicted > 0, "{what}: disk full and nothing evicted");
                full.push((needed, evicted));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: still failing after 5 tries");
}

#[test]
fn full_disk_evicts_old_reports_and_writing_goes_on() {
    let _ = env_logger::builder().is_test(true).try_init();
    let fs = Tmpfs::mount("2m");
    let dir = fs.path.join("data");
    let store = Store::open(&dir, RetentionPolicy::default()).unwrap();
    let mut written: Vec<ReportId> = Vec::new();
    let mut full = Vec::new();
    for n in 0..60u64 {
        let frames = [
            frame("press-2", 160, 120, n * 2),
            frame("belt", 160, 120, n * 2 + 1),
        ];
        let mut w = retry("begin", &dir, &mut full, || {
            store.begin(meta(Trigger::Voice, &["press-2", "belt"]))
        });
        retry("audio", &dir, &mut full, || {
            w.add_audio(&clip(0.5, n), Some("what is the press doing"))
        });
        retry("sentence", &dir, &mut full, || {
            w.add_sentence("The press [cam:press-2] is idle.", at(700), &frames)
        });
        retry("sentence", &dir, &mut full, || {
            w.add_sentence("The belt [cam:belt] moves.", at(900), &frames)
        });
        retry("image", &dir, &mut full, || w.add_image(&frames[0]));
        written.push(retry("finish", &dir, &mut full, || {
            w.finish(ReportStats::default())
        }));
        assert_eq!(store.integrity_check().unwrap(), ["ok"], "after report {n}");
    }
    eprintln!(
        "{} reports written on a 2 MiB tmpfs; {} disk-full errors, each retried after evicting \
         {:?} report(s)",
        written.len(),
        full.len(),
        full.iter().map(|f| f.1).collect::<Vec<_>>()
    );
    // Which write meets the full disk depends on the sizes of the pages and the index: often a
    // report's HTML page, which the store retries itself after evicting (pages never fail a
    // report), so not every fill reaches the caller. At least one must, and the evictions
    // checked below (no byte budget: only a full disk evicts) show the rest.
    assert!(
        !full.is_empty(),
        "no write met a full disk: the test is not testing"
    );

    let kept = assert_consistent(&store);
    let kept_ids: Vec<ReportId> = kept.iter().rev().map(|r| r.id.clone()).collect();
    assert!(
        kept_ids.len() < written.len() / 2,
        "kept {} of {}",
        kept_ids.len(),
        written.len()
    );
    assert_eq!(
        kept_ids,
        written[written.len() - kept_ids.len()..],
        "oldest evicted first"
    );
    assert!(kept
        .iter()
        .all(|r| r.status == ReportStatus::Complete && r.segments.len() == 6));
    // Every kept report has its page, also those whose page write met the full disk.
    let mut pages = Vec::new();
    let mut stack = vec![dir.join("html")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                pages.push(n.to_string());
            }
        }
    }
    for id in &kept_ids {
        let page = format!("{}.html", id.as_str());
        assert!(pages.contains(&page), "no page {page} among {pages:?}");
    }
    drop(store);

    // A restart finds nothing to repair, and the store keeps taking reports.
    let store = Store::open(&dir, RetentionPolicy::default()).unwrap();
    let rec = store.recovery();
    assert!(rec.is_clean(), "{rec:?}");
    let mut w = store.begin(meta(Trigger::Cli, &[])).unwrap();
    retry("after reopen", &dir, &mut full, || {
        w.add_image(&frame("belt", 160, 120, 999))
    });
    let id = w.finish(ReportStats::default()).unwrap();
    assert_eq!(
        store
            .list(&ListFilter {
                limit: Some(1),
                ..Default::default()
            })
            .unwrap()[0]
            .id,
        id
    );
    assert_consistent(&store);
}
