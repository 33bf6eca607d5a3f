//! The report store end to end on a real directory: writing and reading back, citations placing
//! frames, recovery of damage, retention by bytes and by age, the lock, and the CLI.

mod common;

use std::fs;
use std::time::Duration;

use common::{assert_consistent, at, clip, frame, meta};
use gemba::report::cli::run_report_command_to;
use gemba::report::{
    ListFilter, ReportCommand, ReportError, ReportId, ReportStats, ReportStatus, RetentionPolicy,
    Segment, Store, Trigger,
};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, RetentionPolicy::default()).unwrap()
}

#[test]
fn writes_and_reads_back_an_interleaved_report() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let frames = [frame("press-2", 64, 48, 1), frame("belt", 64, 48, 2)];
    let mut w = store
        .begin(meta(Trigger::Voice, &["press-2", "belt"]))
        .unwrap();
    let question = w
        .add_audio(&clip(0.5, 1), Some("is the guard closed"))
        .unwrap();
    let p1 = w
        .add_sentence("The guard [cam:press-2] is open.", at(800), &frames)
        .unwrap();
    let p2 = w
        .add_sentence(
            "The belt [cam:belt] runs; the guard [cam:press-2] too.",
            at(1200),
            &frames,
        )
        .unwrap();
    let p3 = w
        .add_sentence("A ghost [cam:roof] is seen.", at(1500), &frames)
        .unwrap();
    let id = w
        .finish(ReportStats {
            prompt_tokens: 812,
            generated_tokens: 31,
            ..Default::default()
        })
        .unwrap();

    assert_eq!(question.index, 0);
    assert_eq!((p1.images.len(), p1.text.as_ref().unwrap().index), (1, 2));
    // press-2 was placed already: only belt's frame goes in before the second sentence.
    assert_eq!(
        (
            p2.images.len(),
            p2.images[0].index,
            p2.text.as_ref().unwrap().index
        ),
        (1, 3, 4)
    );
    assert_eq!(
        (p3.images.len(), p3.unknown.clone()),
        (0, vec!["roof".to_string()])
    );

    let r = store.get(&id).unwrap();
    let shape: Vec<String> = r
        .segments
        .iter()
        .map(|s| match s {
            Segment::Image(i) => format!("image:{}", i.camera),
            Segment::Text(t) => format!("text:{}", t.text),
            Segment::Audio(a) => format!("audio:{}", a.transcript.as_deref().unwrap_or("")),
            Segment::Region(g) => format!("region:{}", g.camera),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "audio:is the guard closed",
            "image:press-2",
            "text:The guard is open.",
            "image:belt",
            "text:The belt runs; the guard too.",
            "text:A ghost is seen."
        ]
    );
    assert_eq!(r.status, ReportStatus::Complete);
    assert_eq!(r.unknown_citations, 1);
    assert_eq!(r.stats.as_ref().unwrap().prompt_tokens, 812);
    assert!(r.finished_at.is_some());
    let Segment::Image(img) = &r.segments[1] else {
        panic!()
    };
    assert_eq!((img.width, img.height, img.frame_seq), (64, 48, 1));
    assert_eq!(
        img.media.path,
        format!("media/{}/{id}/1.jpg", id.date_dir())
    );
    let decoded = image::open(store.media_path(&img.media)).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 48));
    let Segment::Audio(a) = &r.segments[0] else {
        panic!()
    };
    assert_eq!(
        (a.sample_rate, a.duration),
        (16_000, Duration::from_millis(500))
    );
    let wav = hound::WavReader::open(store.media_path(&a.media)).unwrap();
    assert_eq!(wav.len(), 8_000);

    let usage = store.usage().unwrap();
    assert_eq!(
        (usage.reports, usage.segments, usage.open_reports),
        (1, 6, 0)
    );
    assert_eq!(
        usage.media_bytes,
        r.segments
            .iter()
            .filter_map(|s| s.media())
            .map(|m| m.bytes)
            .sum::<u64>()
    );
    assert!(usage.html_bytes > 0 && usage.index_bytes > 0);
    assert_eq!(
        usage.total_bytes,
        usage.media_bytes + usage.html_bytes + usage.index_bytes
    );
    assert_consistent(&store);
}

#[test]
fn writing_after_finish_is_refused_and_drop_marks_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut w = store.begin(meta(Trigger::Api, &[])).unwrap();
    w.add_text("One.", at(1)).unwrap();
    let id = w.finish(ReportStats::default()).unwrap();
    assert!(matches!(
        w.add_text("Two.", at(2)),
        Err(ReportError::Closed { .. })
    ));
    drop(w);
    assert_eq!(store.get(&id).unwrap().status, ReportStatus::Complete);

    let w = store.begin(meta(Trigger::Api, &[])).unwrap();
    let dropped = w.id().clone();
    drop(w);
    match store.get(&dropped).unwrap().status {
        ReportStatus::Incomplete { reason } => assert!(reason.starts_with("abandoned"), "{reason}"),
        other => panic!("{other}"),
    }
}

#[test]
fn recovery_fixes_damage_and_removes_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let frames = [frame("belt", 32, 24, 5)];
    let (kept, damaged, was_open) = {
        let store = open(dir);
        let mut ids = Vec::new();
        for n in 0..3 {
            let mut w = store.begin(meta(Trigger::Cli, &["belt"])).unwrap();
            w.add_sentence("Belt [cam:belt] ok.", at(10), &frames)
                .unwrap();
            w.add_audio(&clip(0.1, n), None).unwrap();
            ids.push(w.finish(ReportStats::default()).unwrap());
        }
        (ids[0].clone(), ids[1].clone(), ids[2].clone())
    };
    // A report left open (as by a crash), a lost frame, a short clip, an orphan, temp files.
    rusqlite::Connection::open(dir.join("index.sqlite"))
        .unwrap()
        .execute(
            "UPDATE reports SET status = 'open' WHERE id = ?1",
            [was_open.as_str()],
        )
        .unwrap();
    let media = |id: &ReportId, n: &str| dir.join(format!("media/{}/{id}/{n}", id.date_dir()));
    fs::remove_file(media(&damaged, "0.jpg")).unwrap();
    let wav = media(&damaged, "2.wav");
    let len = fs::metadata(&wav).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&wav)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    fs::write(media(&kept, "7.jpg"), b"orphan").unwrap();
    fs::write(media(&kept, ".tmp-3.jpg"), b"half").unwrap();
    fs::create_dir_all(dir.join("media/2020/01/01/20200101T000000Z-0000")).unwrap();
    fs::write(
        dir.join("media/2020/01/01/20200101T000000Z-0000/0.jpg"),
        b"evicted",
    )
    .unwrap();
    fs::create_dir_all(dir.join("html/2020")).unwrap();
    fs::write(dir.join("html/2020/.tmp-x.html"), b"").unwrap();
    fs::remove_file(dir.join(format!("html/{}/{kept}.html", kept.date_dir()))).unwrap();

    let store = open(dir);
    let rec = store.recovery();
    assert!(rec.integrity_ok());
    assert_eq!(rec.cut_off, vec![was_open.clone()]);
    let fixed: Vec<(String, u32, String)> = rec
        .media_fixed
        .iter()
        .map(|p| (p.report.to_string(), p.index, p.problem.clone()))
        .collect();
    assert_eq!(
        fixed,
        [
            (damaged.to_string(), 0, "missing".to_string()),
            (
                damaged.to_string(),
                2,
                format!("{} bytes, expected {len}", len / 2)
            ),
        ]
    );
    let mut orphans = rec.orphans_removed.clone();
    orphans.sort();
    assert_eq!(
        orphans,
        [
            "media/2020/01/01/20200101T000000Z-0000/0.jpg".to_string(),
            format!("media/{}/{kept}/7.jpg", kept.date_dir())
        ]
    );
    assert_eq!(rec.temp_removed.len(), 2);
    assert!(
        rec.pages_written >= 3,
        "the cut-off, the damaged and the page-less report"
    );
    assert!(
        !dir.join("media/2020").exists(),
        "empty directories are pruned"
    );

    let r = store.get(&damaged).unwrap();
    assert_eq!(
        r.segments.iter().map(|s| s.index()).collect::<Vec<_>>(),
        [1],
        "only the text is left"
    );
    assert_eq!(
        r.status,
        ReportStatus::Incomplete {
            reason: "damaged: 2 segment(s) lost their media file".into()
        }
    );
    assert_eq!(
        store.get(&was_open).unwrap().status,
        ReportStatus::Incomplete {
            reason: gemba::report::CUT_OFF_REASON.into()
        }
    );
    assert_eq!(store.get(&kept).unwrap().status, ReportStatus::Complete);
    assert_eq!(
        store.usage().unwrap().media_bytes,
        assert_consistent(&store)
            .iter()
            .flat_map(|r| r.segments.iter().filter_map(|s| s.media().map(|m| m.bytes)))
            .sum::<u64>()
    );
    drop(store);
    assert!(
        open(dir).recovery().is_clean(),
        "a second recovery finds nothing to do"
    );
}

#[test]
fn retention_by_bytes_evicts_oldest_finished_never_the_open_one() {
    let tmp = tempfile::tempdir().unwrap();
    // ~75 KB per frame; 40 reports are ~3 MB, so a 2 MiB budget must evict.
    let quota = 2 * 1024 * 1024;
    let store = Store::open(
        tmp.path(),
        RetentionPolicy {
            max_bytes: Some(quota),
            ..Default::default()
        },
    )
    .unwrap();
    let mut written = Vec::new();
    let mut long = store.begin(meta(Trigger::Voice, &["belt"])).unwrap();
    for n in 0..40u64 {
        let mut w = store.begin(meta(Trigger::Api, &["belt"])).unwrap();
        w.add_image(&frame("belt", 320, 240, n)).unwrap();
        written.push(w.finish(ReportStats::default()).unwrap());
        long.add_text(&format!("Still going {n}."), at(n * 100))
            .unwrap();
        let u = store.usage().unwrap();
        assert!(u.total_bytes <= quota, "after report {n}: {u:?}");
    }
    let left: Vec<ReportId> = store
        .list(&ListFilter {
            status: Some("complete".into()),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .rev()
        .collect();
    assert!(
        !left.is_empty() && left.len() < written.len(),
        "kept {} of {}",
        left.len(),
        written.len()
    );
    assert_eq!(
        left,
        written[written.len() - left.len()..],
        "the newest survive, in order"
    );
    // Counted for the metrics.
    let ev = store.evictions();
    assert_eq!(ev.reports as usize, written.len() - left.len());
    assert!(ev.bytes >= ev.reports * 50_000, "{ev:?}");
    // The report being written all along is untouched (though, begun first, it is the oldest).
    long.add_text("Done.", at(5000)).unwrap();
    assert_eq!(store.get(long.id()).unwrap().segments.len(), 41);
    long.finish(ReportStats::default()).unwrap();
    assert_consistent(&store);
}

#[test]
fn a_write_beyond_the_whole_budget_is_refused_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    // Room for the index (with its 256 KiB reserve) and some text, not for a 640x480 frame too.
    let quota = 512 * 1024;
    let store = Store::open(
        tmp.path(),
        RetentionPolicy {
            max_bytes: Some(quota),
            ..Default::default()
        },
    )
    .unwrap();
    let mut w = store.begin(meta(Trigger::Api, &["belt"])).unwrap();
    w.add_text("Fits.", at(1)).unwrap();
    match w.add_image(&frame("belt", 640, 480, 1)) {
        // Refused up front: it could not fit even with every finished report evicted.
        Err(e @ ReportError::TooLarge { .. }) => {
            let ReportError::TooLarge {
                room,
                needed,
                ref id,
                ..
            } = e
            else {
                unreachable!()
            };
            assert!(
                room < quota && needed > room && needed > 200_000 && id == w.id(),
                "{e}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    w.add_text("Still writable.", at(2)).unwrap();
    let id = w.finish(ReportStats::default()).unwrap();
    assert_eq!(store.get(&id).unwrap().segments.len(), 2);
    assert_consistent(&store);
}

#[test]
fn retention_by_age_on_the_timer() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_millis(800)),
        ..Default::default()
    };
    let store = Store::open(tmp.path(), policy).unwrap();
    let mut old = Vec::new();
    for n in 0..2 {
        let mut w = store.begin(meta(Trigger::Cli, &["belt"])).unwrap();
        w.add_image(&frame("belt", 32, 24, n)).unwrap();
        old.push(w.finish(ReportStats::default()).unwrap());
    }
    let mut open_old = store.begin(meta(Trigger::Cli, &[])).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let mut w = store.begin(meta(Trigger::Cli, &[])).unwrap(); // begin() applies the age limit too
    w.add_text("Fresh.", at(1)).unwrap();
    let fresh = w.finish(ReportStats::default()).unwrap();
    let ids: Vec<ReportId> = store
        .list(&ListFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        ids,
        vec![fresh.clone(), open_old.id().clone()],
        "old finished reports gone, the open one kept"
    );
    for id in &old {
        assert!(!tmp
            .path()
            .join(format!("media/{}/{id}", id.date_dir()))
            .exists());
        assert!(matches!(store.get(id), Err(ReportError::NotFound { .. })));
    }
    open_old.add_text("Still here.", at(1)).unwrap();
    open_old.finish(ReportStats::default()).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let ev = store.enforce_retention().unwrap();
    assert_eq!(ev.evicted.len(), 2);
    assert!(store.list(&ListFilter::default()).unwrap().is_empty());
    assert_consistent(&store);
}

#[test]
fn one_writer_at_a_time_and_readers_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    assert!(matches!(
        Store::open(tmp.path(), RetentionPolicy::default()),
        Err(ReportError::Locked { .. })
    ));
    let mut w = store.begin(meta(Trigger::Cli, &[])).unwrap();
    w.add_text("Seen by the reader.", at(5)).unwrap();
    let reader = Store::open_read_only(tmp.path()).unwrap();
    let listed = reader.list(&ListFilter::default()).unwrap();
    assert_eq!(
        (listed.len(), listed[0].status.clone()),
        (1, ReportStatus::Open)
    );
    assert!(matches!(
        reader.begin(meta(Trigger::Cli, &[])),
        Err(ReportError::ReadOnly { .. })
    ));
    assert!(matches!(
        reader.enforce_retention(),
        Err(ReportError::ReadOnly { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::open_read_only(empty.path()),
        Err(ReportError::NoStore { .. })
    ));
}

#[test]
fn cli_list_show_html_export() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let frames = [frame("press-2", 32, 24, 9)];
    let mut w = store
        .begin(meta(
            Trigger::Monitor {
                camera: "press-2".into(),
            },
            &["press-2"],
        ))
        .unwrap();
    w.add_sentence("The guard [cam:press-2] is open.", at(840), &frames)
        .unwrap();
    let id = w
        .finish(ReportStats {
            prompt_tokens: 10,
            generated_tokens: 4,
            ..Default::default()
        })
        .unwrap();
    let mut cut = store.begin(meta(Trigger::Api, &[])).unwrap();
    cut.add_text("Half a thought", at(100)).unwrap();
    let cut_id = cut.abort("shutdown").unwrap();
    drop(store);

    let run = |cmd: ReportCommand| {
        let mut out = Vec::new();
        run_report_command_to(tmp.path(), cmd, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let list = run(ReportCommand::List {
        limit: 0,
        trigger: None,
        status: None,
    });
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[0].starts_with("ID") && lines[0].ends_with("FIRST SENTENCE"),
        "{list}"
    );
    assert!(
        lines[1].starts_with(cut_id.as_str())
            && lines[1].contains(" api ")
            && lines[1].contains(" incomplete ")
    );
    assert!(
        lines[2].starts_with(id.as_str())
            && lines[2].contains("monitor:press-2")
            && lines[2].ends_with("The guard is open.")
    );
    let only = run(ReportCommand::List {
        limit: 0,
        trigger: Some("monitor".into()),
        status: None,
    });
    assert_eq!(only.lines().count(), 2, "{only}");

    let show = run(ReportCommand::Show { id: id.to_string() });
    let image_at = show.find("[0] image  press-2, frame 9").expect(&show);
    let text_at = show
        .find("[1] text   +0.84 s  The guard is open.")
        .expect(&show);
    assert!(image_at < text_at);
    assert!(
        show.contains("Generation: 10 prompt tokens, 4 generated"),
        "{show}"
    );
    let shown_cut = run(ReportCommand::Show {
        id: cut_id.to_string(),
    });
    assert!(
        shown_cut.contains("INCOMPLETE: aborted: shutdown"),
        "{shown_cut}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&run(ReportCommand::Export { id: id.to_string() })).unwrap();
    assert_eq!(json["format"], "gemba-report/1");
    assert_eq!(json["segments"][0]["kind"], "image");
    assert_eq!(
        json["segments"][0]["media"]["path"],
        format!("media/{}/{id}/0.jpg", id.date_dir())
    );
    assert_eq!(json["segments"][1]["text"], "The guard is open.");

    let page = run(ReportCommand::Html {
        id: Some(id.to_string()),
    });
    assert_eq!(
        page.trim_end(),
        tmp.path()
            .join(format!("html/{}/{id}.html", id.date_dir()))
            .to_str()
            .unwrap()
    );
    assert!(fs::read_to_string(page.trim_end())
        .unwrap()
        .contains("The guard is open."));

    let mut sink = Vec::new();
    match run_report_command_to(
        tmp.path(),
        ReportCommand::Show {
            id: "../../etc/passwd".into(),
        },
        &mut sink,
    ) {
        Err(e @ ReportError::BadId { .. }) => assert!(e.to_string().contains("../../etc/passwd")),
        other => panic!("expected BadId, got {other:?}"),
    }
    let missing = ReportId::new("2030-01-01T00:00:00Z".parse().unwrap(), 1);
    assert!(matches!(
        run_report_command_to(
            tmp.path(),
            ReportCommand::Export {
                id: missing.to_string()
            },
            &mut sink
        ),
        Err(ReportError::NotFound { .. })
    ));
}

#[test]
fn listings_filter_by_time_and_camera_and_page_by_position() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut ids = Vec::new();
    for (n, cams) in [&["press-2"][..], &["belt"], &["press-2", "belt"], &[]]
        .iter()
        .enumerate()
    {
        let mut w = store.begin(meta(Trigger::Api, cams)).unwrap();
        w.add_text(&format!("Report {n}."), at(10)).unwrap();
        ids.push(w.finish(ReportStats::default()).unwrap());
        std::thread::sleep(Duration::from_millis(5));
    }
    let list = |f: ListFilter| -> Vec<ReportId> {
        store.list(&f).unwrap().into_iter().map(|s| s.id).collect()
    };
    let newest_first: Vec<ReportId> = ids.iter().rev().cloned().collect();
    assert_eq!(list(ListFilter::default()), newest_first);
    assert_eq!(
        list(ListFilter {
            camera: Some("press-2".into()),
            ..Default::default()
        }),
        [ids[2].clone(), ids[0].clone()],
        "a camera of the query, not a substring of the meta"
    );
    assert!(list(ListFilter {
        camera: Some("press".into()),
        ..Default::default()
    })
    .is_empty());
    let all = store.list(&ListFilter::default()).unwrap();
    let t1 = all.iter().find(|s| s.id == ids[1]).unwrap().created_at;
    let t2 = all.iter().find(|s| s.id == ids[2]).unwrap().created_at;
    assert_eq!(
        list(ListFilter {
            since: Some(t1),
            until: Some(t2),
            ..Default::default()
        }),
        [ids[1].clone()],
        "since inclusive, until exclusive"
    );
    // Pages of two by position: no report twice, none left out.
    let first = store
        .list(&ListFilter {
            limit: Some(2),
            ..Default::default()
        })
        .unwrap();
    let last = first.last().unwrap();
    let after = Some((last.created_at, last.id.as_str().to_string()));
    let second = list(ListFilter {
        limit: Some(2),
        after,
        ..Default::default()
    });
    let mut paged: Vec<ReportId> = first.into_iter().map(|s| s.id).collect();
    paged.extend(second);
    assert_eq!(paged, newest_first);
}
