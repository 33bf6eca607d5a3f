//! Region citations in the report store: well-formed regions come back from the writer with
//! their sentence, malformed ones leave the text and are counted in the report's stats (never
//! an error, never a broken report).

mod common;

use common::{assert_consistent, at, frame, meta};
use gemba::report::cite::{BoxK, Region};
use gemba::report::cli::run_report_command_to;
use gemba::report::{ReportCommand, ReportStats, RetentionPolicy, Segment, Store, Trigger};

#[test]
fn regions_are_returned_and_bad_boxes_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), RetentionPolicy::default()).unwrap();
    let frames = [frame("press-2", 64, 48, 1), frame("belt", 64, 48, 2)];
    let mut w = store
        .begin(meta(Trigger::Api, &["press-2", "belt"]))
        .unwrap();
    let p1 = w
        .add_sentence(
            "The lamp [cam:press-2 box:100,200,300,400] is amber.",
            at(800),
            &frames,
        )
        .unwrap();
    assert_eq!(
        p1.regions,
        vec![Region {
            camera: "press-2".into(),
            bbox: BoxK {
                x0: 100,
                y0: 200,
                x1: 300,
                y1: 400
            }
        }]
    );
    assert_eq!(
        p1.images.len(),
        1,
        "the cited frame is placed before the sentence"
    );
    let p2 = w
        .add_sentence(
            "Bad [cam:belt box:500,0,100,10] and [cam:roof box:1,2,3,4] and \
             [cam:belt box:1,2,3,x] boxes.",
            at(900),
            &frames,
        )
        .unwrap();
    assert!(p2.regions.is_empty() && p2.images.is_empty());
    assert_eq!(w.dropped_regions(), 3);
    let id = w
        .finish(ReportStats {
            prompt_tokens: 10,
            generated_tokens: 4,
            ..Default::default()
        })
        .unwrap();
    let r = store.get(&id).unwrap();
    assert_eq!(r.stats.as_ref().unwrap().dropped_regions, 3);
    let texts: Vec<&str> = r
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Text(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["The lamp is amber.", "Bad and and boxes."]);
    assert_consistent(&store);
    drop(store);
    let mut out = Vec::new();
    run_report_command_to(
        tmp.path(),
        ReportCommand::Show { id: id.to_string() },
        &mut out,
    )
    .unwrap();
    let show = String::from_utf8(out).unwrap();
    assert!(
        show.contains("3 region citation(s) dropped"),
        "report show counts the drops: {show}"
    );
}
