//! Crash safety of the real daemon: `gemba run` on a fast replay camera with the tiny text model
//! writes reports continuously; the test kill -9s it at random points until at least 200 reports
//! have been begun. After every kill it reopens the store (running recovery, as the next start
//! would) and checks that
//! - `PRAGMA integrity_check` is ok and every indexed media file is intact (sha256), with no
//!   orphaned or temporary file (tests/common's `assert_consistent`);
//! - every segment the daemon had acknowledged before the kill (its `GEMBA_ACK_LOG` lines) is
//!   there, same kind and media hash;
//! - every report that was cut off is marked incomplete, and no report is left open;
//! - the daemon starts again and keeps writing.
//!
//! The kill points come from a seeded generator (`GEMBA_CRASH_SEED` replays a run).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gemba::report::{ListFilter, ReportStatus, RetentionPolicy, Store};

fn config(dir: &Path) -> std::path::PathBuf {
    write_replay_frames(&dir.join("frames"), 6);
    let cfg = dir.join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{model}"
max_new_tokens = 40
[providers]
order = ["cpu"]
# Any free port: the default one may be taken by another daemon on this machine.
[api]
listen = "127.0.0.1:0"
[[cameras]]
name = "press-1"
kind = "replay"
source = "frames"
fps = 25.0
prompt = "What is the pressure on press 1?"
"#,
            model = root().join("models/tiny-qwen2/fp32").display()
        ),
    )
    .unwrap();
    cfg
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kill_9_during_report_writes_loses_nothing_acknowledged() {
    let seed: u64 = std::env::var("GEMBA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("GEMBA_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let acks = tmp.path().join("acks.log");
    let store_dir = tmp.path().join("store");
    let started = Instant::now();
    let mut kills = 0;
    let mut expected: HashMap<(String, u32), (String, String)> = HashMap::new();
    let mut closed: std::collections::HashSet<String> = Default::default();
    loop {
        let mut child = gemba()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("GEMBA_ACK_LOG", &acks)
            .env("GEMBA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited by itself"
        );
        Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        kills += 1;

        let log = std::fs::read_to_string(&acks).unwrap_or_default();
        let mut begun = std::collections::HashSet::new();
        for line in log.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                [id, "begun"] => {
                    begun.insert(id.to_string());
                }
                [id, "closed"] => {
                    closed.insert(id.to_string());
                }
                [id, idx, kind, sha] => {
                    expected.insert(
                        (id.to_string(), idx.parse().unwrap()),
                        (kind.to_string(), sha.to_string()),
                    );
                }
                // A line cut by the kill: its ack had not been written out yet.
                _ => {}
            }
        }
        // Recovery, as the next start runs it; then the independent consistency check.
        let store = Store::open(
            &store_dir,
            RetentionPolicy {
                max_bytes: None,
                max_age: None,
                min_free_bytes: 0,
            },
        )
        .unwrap();
        let reports = assert_consistent(&store);
        let by_id: HashMap<String, &gemba::report::Report> = reports
            .iter()
            .map(|r| (r.id.as_str().to_string(), r))
            .collect();
        for ((id, idx), (kind, sha)) in &expected {
            let r = by_id.get(id).unwrap_or_else(|| {
                panic!("report {id} with acknowledged segments is gone (seed {seed})")
            });
            let seg = r
                .segments
                .iter()
                .find(|s| s.index() == *idx)
                .unwrap_or_else(|| {
                    panic!("report {id}: acknowledged segment {idx} ({kind}) is gone (seed {seed})")
                });
            assert_eq!(seg.kind(), kind, "report {id} segment {idx}");
            if sha != "-" {
                assert_eq!(
                    &seg.media().unwrap().sha256,
                    sha,
                    "report {id} segment {idx}"
                );
            }
        }
        for r in &reports {
            let id = r.id.as_str();
            if closed.contains(id) {
                assert!(
                    matches!(r.status, ReportStatus::Complete),
                    "report {id} was closed complete before the kill"
                );
            } else {
                // Cut off by a kill (→ incomplete), or closed just before the kill landed, after
                // the store's acknowledgement but before the log line (→ complete). Never open.
                assert!(
                    matches!(
                        r.status,
                        ReportStatus::Incomplete { .. } | ReportStatus::Complete
                    ),
                    "report {id} is {:?}",
                    r.status
                );
            }
        }
        let total = store.list(&ListFilter::default()).unwrap().len();
        drop(store);
        // A kill between the store's begin and the log line leaves one report the log lacks.
        assert!(
            total <= begun.len() + kills,
            "reports the daemon never began: {total} in the store, {} begun",
            begun.len()
        );
        eprintln!(
            "kill {kills}: {} reports begun, {} in the store, {} acknowledged segments",
            begun.len(),
            total,
            expected.len()
        );
        if total >= 200 && kills >= 10 {
            assert!(
                closed.len() >= 100,
                "most reports complete between kills ({} of {})",
                closed.len(),
                begun.len()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "too slow: {} reports in 240 s",
            begun.len()
        );
    }
    assert!(
        kills >= 10,
        "the daemon was killed mid-run at least 10 times ({kills})"
    );
}
