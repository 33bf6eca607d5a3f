//! Static HTML for reports: one page per report and an index page, written into the store
//! (`html/…`) and opened straight from the file system.
//!
//! Media are *relative links* into the store (`../../../../media/…`), not data URIs: the store
//! runs within a disk budget, and inlining would store every frame twice (and a third bigger, as
//! base64). The pages work from `file://` and from any server that serves the store directory.
//! A small script in each page marks frames whose file did not load (`data-loaded="no"`, a visible
//! label), so a damaged store shows as such instead of as a blank space.
//!
//! Pure: a [`Report`] (or summaries) in, a `String` out; the store writes the files.

use std::fmt::Write;

use jiff::Timestamp;

use super::layout::{self, PAGE_TO_INDEX, PAGE_TO_STORE};
use super::store::ReportSummary;
use super::{MediaRef, Report, ReportStatus, Segment};

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;max-width:52rem;margin:1.5rem auto;padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.4rem;margin:.2rem 0}
nav a{font-size:.9rem}
.banner{padding:.6rem .8rem;border-radius:4px;font-weight:600}
.banner.incomplete{background:#fde2e1;border:2px solid #c0392b;color:#7b1d13}
.banner.open{background:#fff4d6;border:2px solid #d69e00}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;font-size:.92rem}
dl.meta dt{color:#555}
dl.meta dd{margin:0}
.segment{margin:.7rem 0}
figure.segment{margin-left:0;margin-right:0}
figure img{max-width:100%;height:auto;border:1px solid #ccc;display:block}
figure.missing img{display:none}
figure.missing::before{content:\"frame file missing\";display:block;padding:2rem;background:#eee;color:#7b1d13;text-align:center}
figcaption{font-size:.85rem;color:#555}
p.text .at{font-size:.8rem;color:#777;margin-left:.4rem}
table{border-collapse:collapse;font-size:.92rem}
td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
tr.incomplete td{background:#fdf0ef}
table.reports td:not(:last-child){white-space:nowrap}
img.thumb{display:block;height:auto;border:1px solid #ccc}
tr.alert td{background:#fff1f0;font-weight:600}
.frame{position:relative;display:inline-block;max-width:100%;vertical-align:top}
.frame img{display:block}
.frame .box{position:absolute;box-sizing:border-box;border:3px solid #e8590c;box-shadow:0 0 0 1px #fff}
.frame .box b{position:absolute;left:-3px;top:-1.35rem;background:#e8590c;color:#fff;font-size:.75rem;padding:0 .3rem;border-radius:2px}
.sentence-row{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:flex-start;margin:.7rem 0}
.sentence-row p.text{flex:1 1 20rem;margin:0}
.crops{display:flex;flex-wrap:wrap;gap:.5rem}
figure.region{margin:0}
figure.region img{height:6rem;width:auto;max-width:14rem;object-fit:contain;border:2px solid #e8590c}
";

fn alert_block(
    o: &mut String,
    a: &super::AlertMark,
    report: &Report,
    media: &dyn Fn(u32, &MediaRef) -> String,
) {
    let what = if a.kind == "raise" {
        "raised"
    } else {
        "cleared"
    };
    let _ = writeln!(
        o,
        "<style>\n{ALERT_STYLE}</style>\n<section class=\"alert severity-{sev}\" data-kind=\"{kind}\" data-state=\"{state}\">\n\
         <h2>{sev_word} alert {rule} {what} on {camera}</h2>\n<dl class=\"meta\"><dt>Severity</dt><dd>{sev}</dd>\
         <dt>State</dt><dd>{state}</dd><dt>Rule</dt><dd>{rule}</dd><dt>Camera</dt><dd>{camera}</dd></dl>\n<div class=\"evidence\">",
        sev = esc(&a.severity),
        sev_word = esc(&capitalise(&a.severity)),
        kind = esc(&a.kind),
        state = esc(&a.state),
        rule = esc(&a.rule),
        camera = esc(&a.camera),
    );
    // The frame the transition was decided on (the report's first image).
    if let Some(Segment::Image(img)) = report
        .segments
        .iter()
        .find(|s| matches!(s, Segment::Image(_)))
    {
        let _ = writeln!(
            o,
            "<figure><img src=\"{}\" alt=\"frame of {}\"></figure>",
            esc(&media(img.index, &img.media)),
            esc(&a.camera)
        );
    }
    let answer = serde_json::from_str::<serde_json::Value>(&a.answer)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| a.answer.clone());
    let _ = writeln!(
        o,
        "<pre class=\"answer\" title=\"the structured answer\">{}</pre>\n</div>\n</section>",
        esc(&answer)
    );
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Marks frames whose file did not load, so the page says so instead of showing nothing.
const CHECK_IMAGES: &str = "\
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img');
  var missing = 0;
  imgs.forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    img.setAttribute('data-loaded', ok ? 'yes' : 'no');
    if (!ok) { missing++; img.closest('figure').classList.add('missing'); }
  });
  document.body.setAttribute('data-images', imgs.length + ' images, ' + missing + ' missing');
  // Where each region box was drawn, in thousandths of its frame as shown (a check for tests
  // and people: it should read the box the model cited).
  document.querySelectorAll('.frame .box').forEach(function (b) {
    var f = b.parentElement.querySelector('img').getBoundingClientRect();
    var r = b.getBoundingClientRect();
    var k = function (v, o, s) { return Math.round((v - o) * 1000 / s); };
    b.setAttribute('data-drawn', [k(r.left, f.left, f.width), k(r.top, f.top, f.height),
      k(r.right, f.left, f.width), k(r.bottom, f.top, f.height)].join(','));
  });
});
";

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(t: Timestamp) -> String {
    format!(
        "<time datetime=\"{t:.3}\">{}</time>",
        t.strftime("%Y-%m-%d %H:%M:%S UTC")
    )
}

fn when_precise(t: Timestamp) -> String {
    format!(
        "<time datetime=\"{t:.3}\">{}</time>",
        t.strftime("%H:%M:%S%.3f UTC")
    )
}

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n",
        esc(title)
    );
}

/// The page of one report, to be stored at [`layout::page_path`].
pub fn report_page(report: &Report) -> String {
    let media = |_: u32, m: &MediaRef| format!("{PAGE_TO_STORE}{}", m.path);
    report_page_linked(report, &media, Some(PAGE_TO_INDEX))
}

/// The page of one report with its links pointing elsewhere than the store's directory (the
/// local API serves media by report id and segment index): `media` gives a media file's
/// address from its segment index (unescaped), `index` the "All reports" link, if any.
pub fn report_page_linked(
    report: &Report,
    media: &dyn Fn(u32, &MediaRef) -> String,
    index: Option<&str>,
) -> String {
    report_page_full(report, media, index, None)
}

/// Shown first on the page of an alert's raise or clear: severity, state, rule, and the
/// structured answer beside the frame it was decided on.
const ALERT_STYLE: &str = "section.alert{border-radius:6px;padding:.6rem .9rem;margin:.6rem 0;border:2px solid #888}
section.alert h2{margin:.1rem 0 .4rem;font-size:1.2rem}
section.alert.severity-critical{border-color:#c0392b;background:#fde2e1}
section.alert.severity-warning{border-color:#d69e00;background:#fff4d6}
section.alert.severity-info{border-color:#2b6cb0;background:#e6f0fb}
section.alert .evidence{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
section.alert .evidence figure{flex:1 1 18rem;margin:0}
section.alert pre.answer{flex:1 1 12rem;background:#fff;padding:.6rem;border:1px solid #ccc;white-space:pre-wrap;margin:0}
";

/// As [`report_page_linked`], with the report's alert mark (if it is an alert's raise or clear).
pub fn report_page_full(
    report: &Report,
    media: &dyn Fn(u32, &MediaRef) -> String,
    index: Option<&str>,
    alert: Option<&super::AlertMark>,
) -> String {
    let mut o = String::new();
    let id = report.id.as_str();
    head(
        &mut o,
        &format!("gemba report {id} — {}", report.meta.trigger),
    );
    let _ = writeln!(o, "<body class=\"status-{}\">", report.status.word());
    match index {
        Some(index) => {
            let _ = writeln!(
                o,
                "<nav><a href=\"{}\">All reports</a></nav>\n<header>",
                esc(index)
            );
        }
        None => {
            let _ = writeln!(o, "<header>");
        }
    }
    let _ = writeln!(o, "<h1>Report {id}</h1>");
    if let Some(a) = alert {
        alert_block(&mut o, a, report, media);
    }
    match &report.status {
        ReportStatus::Incomplete { reason } => {
            let _ = writeln!(
                o,
                "<p class=\"banner incomplete\">Incomplete: {}</p>",
                esc(reason)
            );
        }
        ReportStatus::Open => {
            let _ = writeln!(
                o,
                "<p class=\"banner open\">Being written: this page shows the report so far.</p>"
            );
        }
        ReportStatus::Complete => {}
    }
    let m = &report.meta;
    let _ = writeln!(o, "<dl class=\"meta\">");
    let mut row = |label: &str, value: String| {
        let _ = writeln!(o, "<dt>{label}</dt><dd>{value}</dd>");
    };
    row("Trigger", esc(&m.trigger.to_string()));
    row("Status", esc(report.status.word()));
    row("Started", when(report.created_at));
    if let Some(f) = report.finished_at {
        row("Finished", when(f));
    }
    if let Some(p) = &m.prompt {
        row("Prompt", esc(p));
    }
    if !m.cameras.is_empty() {
        row("Cameras", esc(&m.cameras.join(", ")));
    }
    row(
        "Bundle",
        format!("{} <code>{}</code>", esc(&m.bundle_id), esc(&m.bundle_hash)),
    );
    if !m.providers.is_empty() {
        let list: Vec<String> = m
            .providers
            .iter()
            .map(|(c, p)| format!("{c}: {p}"))
            .collect();
        row("Providers", esc(&list.join(", ")));
    }
    let _ = writeln!(o, "</dl>\n</header>\n<main>");
    let boxes = frame_boxes(report);
    let mut i = 0;
    while i < report.segments.len() {
        // A sentence and the crops of the regions it cites (the region segments right after
        // it) form one row: the sentence, its crops beside it.
        let regions = report.segments[i + 1..]
            .iter()
            .take_while(|s| matches!(s, Segment::Region(_)))
            .count();
        match &report.segments[i] {
            s @ Segment::Text(_) if regions > 0 => {
                let _ = writeln!(o, "<div class=\"sentence-row\">");
                segment(&mut o, s, media, &boxes);
                crops(&mut o, &report.segments[i + 1..=i + regions], media, &boxes);
                let _ = writeln!(o, "</div>");
                i += 1 + regions;
            }
            Segment::Region(_) => {
                // Regions of a sentence that was nothing but markers: this one and the
                // `regions` right after it.
                crops(&mut o, &report.segments[i..=i + regions], media, &boxes);
                i += 1 + regions;
            }
            s => {
                segment(&mut o, s, media, &boxes);
                i += 1;
            }
        }
    }
    let _ = writeln!(o, "</main>\n<footer>");
    if let Some(st) = &report.stats {
        let _ = writeln!(o, "<h2>Generation</h2>\n<table class=\"stats\">");
        let mut stat = |label: &str, value: Option<String>| {
            if let Some(v) = value {
                let _ = writeln!(o, "<tr><th>{label}</th><td>{v}</td></tr>");
            }
        };
        stat("Prompt tokens", Some(st.prompt_tokens.to_string()));
        stat("Generated tokens", Some(st.generated_tokens.to_string()));
        stat(
            "Time to first token",
            st.time_to_first_token_ms.map(|v| format!("{v:.0} ms")),
        );
        stat(
            "Time to first sentence",
            st.time_to_first_sentence_ms.map(|v| format!("{v:.0} ms")),
        );
        stat("Total time", st.total_ms.map(|v| format!("{v:.0} ms")));
        stat(
            "Tokens per second",
            st.tokens_per_s.map(|v| format!("{v:.1}")),
        );
        let _ = writeln!(o, "</table>");
    }
    if report.unknown_citations > 0 {
        let _ = writeln!(
            o,
            "<p class=\"unknown-citations\">{} citation(s) named no camera of the query and were left out.</p>",
            report.unknown_citations
        );
    }
    let _ = writeln!(
        o,
        "</footer>\n<script>\n{CHECK_IMAGES}</script>\n</body>\n</html>"
    );
    o
}

/// The boxes drawn on each frame: frame segment index → (region segment index, label, box),
/// labelled 1, 2, … per frame in the order the reply cites them.
type FrameBoxes = std::collections::BTreeMap<u32, Vec<(u32, usize, super::cite::BoxK)>>;

fn frame_boxes(report: &Report) -> FrameBoxes {
    let mut out = FrameBoxes::new();
    for s in &report.segments {
        if let Segment::Region(r) = s {
            let list = out.entry(r.frame_index).or_default();
            let label = list.len() + 1;
            list.push((r.index, label, r.bbox));
        }
    }
    out
}

/// Where region segment `index` is drawn on its frame: its label there.
fn box_label(boxes: &FrameBoxes, frame: u32, index: u32) -> Option<usize> {
    boxes
        .get(&frame)?
        .iter()
        .find(|(i, _, _)| *i == index)
        .map(|(_, label, _)| *label)
}

fn crops(
    o: &mut String,
    regions: &[Segment],
    media: &dyn Fn(u32, &MediaRef) -> String,
    boxes: &FrameBoxes,
) {
    let _ = writeln!(o, "<div class=\"crops\">");
    for s in regions {
        segment(o, s, media, boxes);
    }
    let _ = writeln!(o, "</div>");
}

/// Thousandths as a CSS percentage.
fn pct(k: u16) -> String {
    format!("{:.1}%", f64::from(k) / 10.0)
}

fn segment(
    o: &mut String,
    s: &Segment,
    media: &dyn Fn(u32, &MediaRef) -> String,
    boxes: &FrameBoxes,
) {
    match s {
        Segment::Image(img) => {
            // The regions the reply cites on this frame, drawn over it (CSS, no script).
            let drawn: String = boxes
                .get(&img.index)
                .into_iter()
                .flatten()
                .map(|(region, label, b)| {
                    format!(
                        "<span class=\"box\" data-region=\"{region}\" title=\"box {b}\" \
                         style=\"left:{};top:{};width:{};height:{}\"><b>{label}</b></span>",
                        pct(b.x0),
                        pct(b.y0),
                        pct(b.x1 - b.x0),
                        pct(b.y1 - b.y0),
                    )
                })
                .collect();
            let _ = writeln!(
                o,
                "<figure class=\"segment image\" data-kind=\"image\" data-index=\"{}\">\n\
                 <div class=\"frame\"><img src=\"{}\" width=\"{}\" height=\"{}\" alt=\"Frame from {} at {}\">{drawn}</div>\n\
                 <figcaption>{} · frame {} · {}</figcaption>\n</figure>",
                img.index,
                esc(&media(img.index, &img.media)),
                img.width,
                img.height,
                esc(&img.camera),
                img.captured_at.strftime("%H:%M:%S%.3f UTC"),
                esc(&img.camera),
                img.frame_seq,
                when_precise(img.captured_at),
            );
        }
        Segment::Region(r) => {
            let label = box_label(boxes, r.frame_index, r.index)
                .map(|l| format!("<b>{l}</b> · "))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "<figure class=\"segment region\" data-kind=\"region\" data-index=\"{}\" data-frame=\"{}\">\n\
                 <img src=\"{}\" width=\"{}\" height=\"{}\" alt=\"Region {} of {}\">\n\
                 <figcaption>{label}{} · box {}</figcaption>\n</figure>",
                r.index,
                r.frame_index,
                esc(&media(r.index, &r.media)),
                r.width,
                r.height,
                r.bbox,
                esc(&r.camera),
                esc(&r.camera),
                r.bbox,
            );
        }
        Segment::Text(t) => {
            let _ = writeln!(
                o,
                "<p class=\"segment text\" data-kind=\"text\" data-index=\"{}\"><span class=\"sentence\">{}</span>\
                 <span class=\"at\">+{:.2} s</span></p>",
                t.index,
                esc(&t.text),
                t.at.as_secs_f64(),
            );
        }
        Segment::Audio(a) => {
            let transcript = a
                .transcript
                .as_deref()
                .map(|t| format!(" — “{}”", esc(t)))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "<figure class=\"segment audio\" data-kind=\"audio\" data-index=\"{}\">\n\
                 <audio controls preload=\"metadata\" src=\"{}\"></audio>\n\
                 <figcaption>{} · {:.2} s · {}{transcript}</figcaption>\n</figure>",
                a.index,
                esc(&media(a.index, &a.media)),
                esc(&a.source),
                a.duration.as_secs_f64(),
                when_precise(a.started_at),
            );
        }
    }
}

/// The index page (stored at [`layout::INDEX_PAGE`]): `reports` newest first, out of `total`.
pub fn index_page(reports: &[ReportSummary], total: u64, generated_at: Timestamp) -> String {
    let mut o = String::new();
    head(&mut o, "gemba reports");
    let _ = writeln!(o, "<body>\n<h1>gemba reports</h1>");
    let _ = writeln!(
        o,
        "<p>Newest first: {} of {total} report(s). Written {}.{}</p>",
        reports.len(),
        when(generated_at),
        if (reports.len() as u64) < total {
            " Older ones: <code>gemba report list</code>."
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "<table class=\"reports\">\n<thead><tr><th>Frame</th><th>Started (UTC)</th><th>Trigger</th><th>Status</th>\
         <th>Segments</th><th>First sentence</th></tr></thead>\n<tbody>"
    );
    for r in reports {
        let started = r.created_at.strftime("%Y-%m-%d %H:%M:%S").to_string();
        // An open report has no page yet (it is written when the report closes).
        let link = match r.status {
            ReportStatus::Open => format!("{started} (being written)"),
            _ => format!(
                "<a href=\"{}\">{started}</a>",
                layout::page_link_from_index(&r.id)
            ),
        };
        let status = match &r.status {
            ReportStatus::Incomplete { reason } => format!("incomplete: {}", esc(reason)),
            other => other.word().to_string(),
        };
        // The report's first frame as a thumbnail (the store's media, relative to html/).
        let thumb = match &r.first_image_path {
            Some(p) => format!(
                "<img class=\"thumb\" src=\"../{}\" width=\"96\" alt=\"first frame\" loading=\"lazy\">",
                esc(p)
            ),
            None => String::new(),
        };
        // An alert's raise or clear stands out.
        let alert = if r.trigger.starts_with("alert:") {
            " alert"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "<tr class=\"{}{alert}\" data-id=\"{}\"><td>{thumb}</td><td>{link}</td><td>{}</td><td>{status}</td><td>{}</td><td>{}</td></tr>",
            r.status.word(),
            r.id,
            esc(&r.trigger),
            r.segments,
            esc(r.first_sentence.as_deref().unwrap_or("")),
        );
    }
    let _ = writeln!(o, "</tbody>\n</table>\n</body>\n</html>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<b a="1" c='2'>&</b>"#),
            "&lt;b a=&quot;1&quot; c=&#39;2&#39;&gt;&amp;&lt;/b&gt;"
        );
        assert_eq!(esc("plain · text ✓"), "plain · text ✓");
    }
}
