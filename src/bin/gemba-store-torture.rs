//! gemba-store-torture: writes reports into a report store in a loop and prints one line per
//! acknowledged segment, so that whoever kills it (kill -9, a power cut) knows exactly what must
//! have survived.
//!
//! The crash test (`tests/report_crash.rs`) kills it at random points and checks the store after
//! each restart. On a board, run it against the real disk, pull the power, and check with
//! `gemba report list` or the crash test's checks.
//!
//! Output lines (stdout, flushed each):
//! ```text
//! OPENED cut_off=N fixed=N orphans=N temp=N integrity=ok
//! BEGIN <id>
//! ACK <id> <index> <image|text|audio> <sha256 or ->
//! RETRY <id> <error>                      (disk full: evicted, trying again)
//! FINISH <id> | ABORT <id>
//! DONE
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gemba::capture::{AudioClip, Frame};
use gemba::report::{
    Ack, ReportError, ReportMeta, ReportStats, RetentionPolicy, Store, TextTimings, Trigger,
};

const USAGE: &str = "usage: gemba-store-torture DIR [--reports N (0: forever)] [--seed S] \
                     [--max-bytes B] [--frame WxH]";

/// splitmix64: a seeded, repeatable stream; good enough to vary sizes and content.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Args {
    dir: PathBuf,
    reports: u64,
    seed: u64,
    max_bytes: Option<u64>,
    frame: (u32, u32),
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let dir = it.next().ok_or(USAGE)?;
    let mut a = Args {
        dir: dir.into(),
        reports: 0,
        seed: 1,
        max_bytes: None,
        frame: (48, 32),
    };
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"));
        match flag.as_str() {
            "--reports" => a.reports = num(&value)?,
            "--seed" => a.seed = num(&value)?,
            "--max-bytes" => a.max_bytes = Some(num(&value)?),
            "--frame" => {
                let (w, h) = value
                    .split_once('x')
                    .ok_or_else(|| format!("--frame {value:?}: expected WxH"))?;
                a.frame = (num(w)? as u32, num(h)? as u32);
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn say(line: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    // If the reader is gone there is nobody to tell; stop quietly.
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn ack(id: &str, a: &Ack) {
    let sha = a.media.as_ref().map_or("-", |m| m.sha256.as_str());
    say(format_args!("ACK {id} {} {} {sha}", a.index, a.kind));
}

/// Retries a write after a full disk (the store evicted old reports), as the daemon would.
fn retrying<T>(id: &str, mut f: impl FnMut() -> Result<T, ReportError>) -> Result<T, ReportError> {
    loop {
        match f() {
            Err(e @ ReportError::DiskFull { evicted, .. }) if evicted > 0 => {
                say(format_args!("RETRY {id} {e}"));
            }
            other => return other,
        }
    }
}

fn frame(rng: &mut Rng, camera: &str, (w, h): (u32, u32)) -> Frame {
    let base = rng.next();
    let rgb = (0..w * h * 3)
        .map(|i| ((i as u64).wrapping_mul(base | 1) >> 7) as u8 ^ (rng.below(16) as u8))
        .collect();
    Frame {
        camera: camera.to_string(),
        seq: rng.below(1_000_000),
        captured_at: SystemTime::now(),
        width: w,
        height: h,
        rgb: Arc::new(rgb),
    }
}

fn clip(rng: &mut Rng) -> AudioClip {
    let n = 800 + rng.below(2400) as usize;
    let f = 0.01 + rng.below(100) as f32 / 2000.0;
    AudioClip {
        source: "mic-1".into(),
        started_at: SystemTime::now(),
        sample_rate: 16_000,
        samples: Arc::new((0..n).map(|i| (i as f32 * f).sin() * 0.4).collect()),
    }
}

const WORDS: &[&str] = &[
    "the", "press", "guard", "is", "open", "belt", "stopped", "operator", "near", "line", "two",
];

fn sentence(rng: &mut Rng, cameras: &[&str]) -> String {
    let n = 3 + rng.below(8) as usize;
    let mut words: Vec<String> = (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize].to_string())
        .collect();
    match rng.below(6) {
        0 | 1 => words.insert(
            1,
            format!(
                "[cam:{}]",
                cameras[rng.below(cameras.len() as u64) as usize]
            ),
        ),
        2 => words.push("[cam:roof]".into()),
        3 => {
            // A region (its crop becomes a segment of its own), now and then a broken one.
            let cam = cameras[rng.below(cameras.len() as u64) as usize];
            let x0 = rng.below(900);
            let y0 = rng.below(900);
            let (x1, y1) = if rng.below(8) == 0 {
                (x0, y0) // empty: dropped and counted
            } else {
                (x0 + 1 + rng.below(1000 - x0), y0 + 1 + rng.below(1000 - y0))
            };
            words.insert(1, format!("[cam:{cam} box:{x0},{y0},{x1},{y1}]"));
        }
        _ => {}
    }
    format!("{}.", words.join(" "))
}

fn run(a: Args) -> Result<(), ReportError> {
    let policy = RetentionPolicy {
        max_bytes: a.max_bytes,
        ..Default::default()
    };
    let store = Store::open(&a.dir, policy)?;
    let result = write_reports(&a, &store);
    if result.is_err() {
        // What the store looked like when it gave up helps more than the error alone.
        eprintln!(
            "gemba-store-torture: store usage at the error: {:?}",
            store.usage()
        );
    }
    result
}

fn write_reports(a: &Args, store: &Store) -> Result<(), ReportError> {
    let r = store.recovery();
    say(format_args!(
        "OPENED cut_off={} fixed={} orphans={} temp={} integrity={}",
        r.cut_off.len(),
        r.media_fixed.len(),
        r.orphans_removed.len(),
        r.temp_removed.len(),
        r.integrity.join("|")
    ));
    let mut rng = Rng(a.seed);
    let cameras = ["press-2", "belt"];
    let mut n = 0;
    while a.reports == 0 || n < a.reports {
        n += 1;
        let trigger = match rng.below(4) {
            0 => Trigger::Monitor {
                camera: "press-2".into(),
            },
            1 => Trigger::Voice,
            2 => Trigger::Api,
            _ => Trigger::Cli,
        };
        let meta = ReportMeta {
            trigger: trigger.clone(),
            prompt: Some("Is the guard closed?".into()),
            cameras: cameras.iter().map(|c| c.to_string()).collect(),
            bundle_id: "torture".into(),
            bundle_hash: "sha256:0000".into(),
            providers: [("text".to_string(), "cpu".to_string())].into(),
        };
        let mut w = retrying("-", || store.begin(meta.clone()))?;
        let id = w.id().to_string();
        say(format_args!("BEGIN {id}"));
        let frames: Vec<Frame> = cameras
            .iter()
            .map(|c| frame(&mut rng, c, a.frame))
            .collect();
        if trigger == Trigger::Voice {
            let c = clip(&mut rng);
            ack(
                &id,
                &retrying(&id, || w.add_audio(&c, Some("is the guard closed")))?,
            );
        }
        if rng.below(2) == 0 {
            ack(&id, &retrying(&id, || w.add_image(&frames[0]))?);
        }
        let sentences = 1 + rng.below(6);
        for i in 0..sentences {
            let s = sentence(&mut rng, &cameras);
            let t = TextTimings {
                at: Duration::from_millis(300 + 250 * i),
                token_span: Some((i as usize * 8, i as usize * 8 + 8)),
            };
            let placed = retrying(&id, || w.add_sentence(&s, t, &frames))?;
            for a in placed
                .images
                .iter()
                .chain(&placed.text)
                .chain(&placed.crops)
            {
                ack(&id, a);
            }
        }
        if rng.below(4) == 0 {
            let c = clip(&mut rng);
            ack(&id, &retrying(&id, || w.add_audio(&c, None))?);
        }
        if rng.below(10) == 0 {
            retrying(&id, || w.abort("operator cancelled"))?;
            say(format_args!("ABORT {id}"));
        } else {
            let stats = ReportStats {
                prompt_tokens: 100,
                generated_tokens: sentences * 8,
                ..Default::default()
            };
            retrying(&id, || w.finish(stats.clone()))?;
            say(format_args!("FINISH {id}"));
        }
    }
    say(format_args!("DONE"));
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemba-store-torture: {e}");
            ExitCode::FAILURE
        }
    }
}
