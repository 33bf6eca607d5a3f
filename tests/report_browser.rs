//! The pages in a real browser: headless Chromium opens report pages and the index straight
//! from the store (`file://`), runs them, and dumps the resulting DOM. The page's own script
//! records for each frame whether it loaded (`naturalWidth > 0`); the test reads that, the
//! order of the segments and sentences, and the index's links.
//!
//! Needs the Debian package `chromium` (scripts/setup installs it).

mod common;

use common::{at, attr_values, clip, dump_dom, frame, img_tags, meta};
use gemba::report::{ListFilter, ReportStats, RetentionPolicy, Segment, Store, Trigger};

#[test]
fn pages_load_in_chromium_with_every_frame_and_sentences_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), RetentionPolicy::default()).unwrap();
    let frames = [frame("press-2", 320, 240, 11), frame("belt", 200, 150, 12)];

    let mut w = store
        .begin(meta(Trigger::Voice, &["press-2", "belt"]))
        .unwrap();
    w.add_audio(&clip(1.0, 3), Some("what is going on at press 2"))
        .unwrap();
    let sentences = [
        "The guard [cam:press-2] of press 2 is open.",
        "An operator stands <close> to it & waits.",
        "The belt [cam:belt] is stopped.",
        "Nothing else [cam:roof] moves.",
    ];
    for (i, s) in sentences.iter().enumerate() {
        w.add_sentence(s, at(600 + 400 * i as u64), &frames)
            .unwrap();
    }
    let full = w
        .finish(ReportStats {
            prompt_tokens: 900,
            generated_tokens: 40,
            ..Default::default()
        })
        .unwrap();

    let mut cut = store.begin(meta(Trigger::Api, &["belt"])).unwrap();
    cut.add_sentence("The belt [cam:belt] starts", at(300), &frames)
        .unwrap();
    let cut = cut.abort("shutdown").unwrap();

    // --- a complete report: every frame decodes, segments and sentences in report order.
    let report = store.get(&full).unwrap();
    let dom = dump_dom(&store.page_path(&full));
    let imgs = img_tags(&dom);
    let image_segments = report
        .segments
        .iter()
        .filter(|s| matches!(s, Segment::Image(_)))
        .count();
    assert_eq!(imgs.len(), image_segments, "{dom}");
    for tag in &imgs {
        assert!(
            tag.contains("data-loaded=\"yes\""),
            "a frame did not load: {tag}"
        );
    }
    assert_eq!(
        attr_values(&dom, "data-images"),
        [format!("{image_segments} images, 0 missing")]
    );
    let kinds: Vec<&str> = report.segments.iter().map(|s| s.kind()).collect();
    assert_eq!(attr_values(&dom, "data-kind"), kinds);
    let indices: Vec<String> = report
        .segments
        .iter()
        .map(|s| s.index().to_string())
        .collect();
    assert_eq!(attr_values(&dom, "data-index"), indices);
    let expected = [
        "The guard of press 2 is open.",
        "An operator stands &lt;close&gt; to it &amp; waits.",
        "The belt is stopped.",
        "Nothing else moves.",
    ];
    let mut last = 0;
    for s in expected {
        let pos = dom[last..]
            .find(&format!("<span class=\"sentence\">{s}</span>"))
            .map(|p| p + last);
        last = pos.unwrap_or_else(|| panic!("sentence {s:?} missing or out of order in\n{dom}"));
    }
    assert!(
        !dom.contains("[cam:"),
        "citation markers must not reach the page"
    );
    assert_eq!(dom.matches("<audio ").count(), 1);

    // --- the cut-off report is marked as such.
    let dom = dump_dom(&store.page_path(&cut));
    assert!(
        dom.contains("<p class=\"banner incomplete\">Incomplete: aborted: shutdown</p>"),
        "{dom}"
    );
    assert!(dom.contains("<body class=\"status-incomplete\""), "{dom}");

    // --- a frame whose file is gone shows as missing (the check can fail).
    let broken = store.get(&cut).unwrap();
    let lost = broken.segments.iter().find_map(|s| s.media()).unwrap();
    std::fs::remove_file(store.media_path(lost)).unwrap();
    let dom = dump_dom(&store.page_path(&cut));
    assert_eq!(attr_values(&dom, "data-images"), ["1 images, 1 missing"]);
    assert!(img_tags(&dom)[0].contains("data-loaded=\"no\""), "{dom}");

    // --- the index: newest first, links that open the pages.
    let index = store.write_index_html().unwrap();
    let dom = dump_dom(&index);
    let listed: Vec<String> = store
        .list(&ListFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(attr_values(&dom, "data-id"), listed, "{dom}");
    assert_eq!(listed, [cut.to_string(), full.to_string()]);
    let links = attr_values(&dom, "href");
    assert_eq!(links.len(), 2, "{dom}");
    for (link, id) in links.iter().zip(&listed) {
        assert!(link.ends_with(&format!("{id}.html")));
        assert!(
            index.parent().unwrap().join(link).is_file(),
            "index links to missing {link}"
        );
    }
    assert!(dom.contains("<tr class=\"incomplete\""), "{dom}");
}

/// Regions in Chromium: every frame and crop loads, each crop comes right after the sentence
/// that cites it (in citation order), and each box is drawn over its frame where it was cited
/// (read back from the laid-out page, in thousandths of the frame as shown).
#[test]
fn region_crops_load_after_their_sentences_and_boxes_sit_on_the_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), RetentionPolicy::default()).unwrap();
    let frames = [frame("press-2", 640, 360, 21), frame("belt", 320, 240, 22)];
    let mut w = store
        .begin(meta(
            Trigger::Monitor {
                camera: "press-2".into(),
            },
            &["press-2", "belt"],
        ))
        .unwrap();
    let sentences = [
        "[cam:press-2] The lamp [cam:press-2 box:120,80,260,400] is amber.",
        "The pressure [cam:press-2 box:600,150,900,700] is normal.",
        "[cam:belt] There are two boxes [cam:belt box:100,450,250,600][cam:belt box:500,430,640,600] on the belt.",
    ];
    for (i, s) in sentences.iter().enumerate() {
        w.add_sentence(s, at(500 + 300 * i as u64), &frames)
            .unwrap();
    }
    let id = w.finish(ReportStats::default()).unwrap();
    let report = store.get(&id).unwrap();
    let dom = dump_dom(&store.page_path(&id));

    let imgs = img_tags(&dom);
    assert_eq!(imgs.len(), 6, "two frames and four crops: {dom}");
    assert!(
        imgs.iter().all(|t| t.contains("data-loaded=\"yes\"")),
        "{imgs:?}"
    );
    assert_eq!(attr_values(&dom, "data-images"), ["6 images, 0 missing"]);

    // Page order: frame, sentence, its crop, sentence, its crop, frame, sentence, two crops.
    let kinds: Vec<&str> = report.segments.iter().map(|s| s.kind()).collect();
    assert_eq!(
        kinds,
        ["image", "text", "region", "text", "region", "image", "text", "region", "region"]
    );
    assert_eq!(attr_values(&dom, "data-kind"), kinds);
    let crop_alts: Vec<String> = imgs
        .iter()
        .filter(|t| t.contains("alt=\"Region "))
        .map(|t| {
            t[t.find("alt=\"").unwrap() + 5..]
                .split('"')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        crop_alts,
        [
            "Region 120,80,260,400 of press-2",
            "Region 600,150,900,700 of press-2",
            "Region 100,450,250,600 of belt",
            "Region 500,430,640,600 of belt"
        ],
        "crops in the order they are cited"
    );
    // Each crop sits in the row of the sentence that cites it.
    for (sentence, crop) in [
        ("The lamp is amber.", "Region 120,80,260,400"),
        ("The pressure is normal.", "Region 600,150,900,700"),
        ("There are two boxes on the belt.", "Region 500,430,640,600"),
    ] {
        let row_start = dom[..dom.find(sentence).unwrap()]
            .rfind("<div class=\"sentence-row\">")
            .unwrap();
        let row = &dom[row_start..];
        let row = &row[..row.find("</div>\n</div>").unwrap_or(row.len())];
        assert!(row.contains(sentence) && row.contains(crop), "{row}");
    }

    // The boxes as laid out: where the box was cited, within a pixel or two of rounding.
    let drawn = attr_values(&dom, "data-drawn");
    let cited = [
        "120,80,260,400",
        "600,150,900,700",
        "100,450,250,600",
        "500,430,640,600",
    ];
    assert_eq!(drawn.len(), 4, "{dom}");
    for (d, c) in drawn.iter().zip(cited) {
        let d: Vec<i64> = d.split(',').map(|v| v.parse().unwrap()).collect();
        let c: Vec<i64> = c.split(',').map(|v| v.parse().unwrap()).collect();
        assert!(
            d.iter().zip(&c).all(|(a, b)| (a - b).abs() <= 5),
            "box drawn at {d:?}, cited {c:?}"
        );
    }
}
