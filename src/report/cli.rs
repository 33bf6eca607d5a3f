//! `gemba report list | show ID | html [ID] | export ID`: the store from the command line.
//!
//! What flows in: the store directory and a parsed [`ReportCommand`]; what flows out: text, a
//! page path or JSON on stdout. The store is opened read-only (no lock, no recovery), so these
//! commands work beside a running daemon.

use std::io::Write;
use std::path::Path;

use super::store::{ListFilter, ReportSummary};
use super::{export_json, Report, ReportError, ReportId, ReportStatus, Result, Segment, Store};

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ReportCommand {
    /// List reports, newest first: id, time, trigger, status, segments, first sentence.
    List {
        /// Show at most this many (0: all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this trigger (`monitor` matches every camera, `monitor:press-2` one).
        #[arg(long)]
        trigger: Option<String>,
        /// Only reports in this state.
        #[arg(long, value_parser = ["open", "complete", "incomplete"])]
        status: Option<String>,
    },
    /// Print a report as text, frames, sentences and audio in order.
    Show { id: String },
    /// Write (or refresh) a report's HTML page and the index page, and print the page's path
    /// (without ID: the index page's).
    Html { id: Option<String> },
    /// Print a report as JSON (format `gemba-report/1`).
    Export { id: String },
}

/// Runs `cmd` on the store in `data_dir`, printing to stdout.
pub fn run_report_command(data_dir: &Path, cmd: ReportCommand) -> Result<()> {
    let stdout = std::io::stdout();
    run_report_command_to(data_dir, cmd, &mut stdout.lock())
}

/// [`run_report_command`] writing to `out` (tests, the API).
pub fn run_report_command_to(
    data_dir: &Path,
    cmd: ReportCommand,
    out: &mut dyn Write,
) -> Result<()> {
    let store = Store::open_read_only(data_dir)?;
    let text = match cmd {
        ReportCommand::List {
            limit,
            trigger,
            status,
        } => {
            let filter = ListFilter {
                limit: (limit > 0).then_some(limit),
                trigger,
                status,
                ..Default::default()
            };
            list_table(&store.list(&filter)?)
        }
        ReportCommand::Show { id } => show_text(&store.get(&ReportId::parse(&id)?)?),
        ReportCommand::Html { id: Some(id) } => {
            format!("{}\n", store.write_html(&ReportId::parse(&id)?)?.display())
        }
        ReportCommand::Html { id: None } => format!("{}\n", store.write_index_html()?.display()),
        ReportCommand::Export { id } => export_json(&store.get(&ReportId::parse(&id)?)?),
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| ReportError::Io {
            op: "printing to",
            path: "<stdout>".into(),
            source,
        })
}

const SENTENCE_WIDTH: usize = 60;

/// The `list` table; columns padded to their widest cell.
pub fn list_table(reports: &[ReportSummary]) -> String {
    if reports.is_empty() {
        return "no reports\n".to_string();
    }
    let header = [
        "ID",
        "STARTED (UTC)",
        "TRIGGER",
        "STATUS",
        "SEGMENTS",
        "FIRST SENTENCE",
    ];
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.created_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                r.trigger.clone(),
                r.status.word().to_string(),
                r.segments.to_string(),
                truncate(r.first_sentence.as_deref().unwrap_or(""), SENTENCE_WIDTH),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            match i {
                4 => l.push_str(&format!("{}{cell}  ", " ".repeat(pad))),
                5 => l.push_str(cell),
                _ => l.push_str(&format!("{cell}{}  ", " ".repeat(pad))),
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// The `show` text: metadata, then every segment in order, then the generation figures.
pub fn show_text(r: &Report) -> String {
    let mut o = format!("Report {} — {}\n", r.id, r.status.word());
    if let ReportStatus::Incomplete { reason } = &r.status {
        o += &format!("  INCOMPLETE: {reason}\n");
    }
    let m = &r.meta;
    let mut field = |k: &str, v: String| o += &format!("{k:<10}{v}\n");
    field("Trigger", m.trigger.to_string());
    field(
        "Started",
        r.created_at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
    );
    if let Some(f) = r.finished_at {
        field("Finished", f.strftime("%Y-%m-%d %H:%M:%S UTC").to_string());
    }
    if let Some(p) = &m.prompt {
        field("Prompt", p.clone());
    }
    if !m.cameras.is_empty() {
        field("Cameras", m.cameras.join(", "));
    }
    field("Bundle", format!("{} ({})", m.bundle_id, m.bundle_hash));
    if !m.providers.is_empty() {
        let list: Vec<String> = m
            .providers
            .iter()
            .map(|(c, p)| format!("{c}: {p}"))
            .collect();
        field("Providers", list.join(", "));
    }
    o.push('\n');
    for s in &r.segments {
        o += &match s {
            Segment::Image(i) => format!(
                "[{}] image  {}, frame {}, {}, {}x{} → {}\n",
                i.index,
                i.camera,
                i.frame_seq,
                i.captured_at.strftime("%H:%M:%S%.3f UTC"),
                i.width,
                i.height,
                i.media.path
            ),
            Segment::Region(g) => format!(
                "[{}] region {} box {} of [{}], {}x{} → {}\n",
                g.index, g.camera, g.bbox, g.frame_index, g.width, g.height, g.media.path
            ),
            Segment::Text(t) => format!(
                "[{}] text   +{:.2} s  {}\n",
                t.index,
                t.at.as_secs_f64(),
                t.text
            ),
            Segment::Audio(a) => format!(
                "[{}] audio  {}, {:.2} s, {} → {}{}\n",
                a.index,
                a.source,
                a.duration.as_secs_f64(),
                a.started_at.strftime("%H:%M:%S%.3f UTC"),
                a.media.path,
                a.transcript
                    .as_deref()
                    .map(|t| format!("  “{t}”"))
                    .unwrap_or_default()
            ),
        };
    }
    if let Some(st) = &r.stats {
        let mut parts = vec![
            format!("{} prompt tokens", st.prompt_tokens),
            format!("{} generated", st.generated_tokens),
        ];
        let ms = |label: &str, v: Option<f64>| v.map(|v| format!("{label} {v:.0} ms"));
        parts.extend(ms("first token", st.time_to_first_token_ms));
        parts.extend(ms("first sentence", st.time_to_first_sentence_ms));
        parts.extend(ms("total", st.total_ms));
        parts.extend(st.tokens_per_s.map(|v| format!("{v:.1} tokens/s")));
        o += &format!("\nGeneration: {}\n", parts.join(", "));
    }
    if let Some(n) = r
        .stats
        .as_ref()
        .map(|s| s.dropped_regions)
        .filter(|&n| n > 0)
    {
        o += &format!("{n} region citation(s) dropped (malformed or out-of-range boxes).\n");
    }
    if r.unknown_citations > 0 {
        o += &format!(
            "{} citation(s) named no camera of the query.\n",
            r.unknown_citations
        );
    }
    o
}
