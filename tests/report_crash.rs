//! Crash safety: `gemba-store-torture` writes reports and prints a line per acknowledged
//! segment; this test kill -9s it at random points (during writes, and sometimes during its own
//! start-up recovery) until at least 200 reports have been begun, and after every kill reopens
//! the store and checks that
//! - `PRAGMA integrity_check` is ok,
//! - every segment acknowledged before the kill is there, same kind, media intact (sha256),
//! - no orphaned, temporary or half-written media file is left,
//! - the report cut off by the kill is marked incomplete, and no report is left open.
//!
//! The kill points come from a seeded generator; the seed is printed, and
//! `GEMBA_CRASH_SEED=N cargo test --test report_crash` replays a run.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gemba::report::{ReportStatus, RetentionPolicy, Store, CUT_OFF_REASON};

const MIN_REPORTS: usize = 200;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Expected {
    /// (report, index) → (kind, sha256 or "-"), for every acknowledged segment.
    acked: HashMap<(String, u32), (String, String)>,
    finished: HashSet<String>,
    aborted: HashSet<String>,
    begun: Vec<String>,
}

/// One child run: lines it printed completely before it died.
fn run_child(
    bin: &str,
    dir: &std::path::Path,
    seed: u64,
    rng: &mut Rng,
) -> (Vec<String>, &'static str) {
    let mut child = Command::new(bin)
        .arg(dir)
        .args(["--seed", &seed.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning gemba-store-torture");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                // A line cut by the kill has no newline: it was never fully said, ignore it.
                Ok(0) | Err(_) => break,
                Ok(_) if buf.last() == Some(&b'\n') => {
                    let _ = tx.send(String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned());
                }
                Ok(_) => break,
            }
        }
    });
    let mut lines = Vec::new();
    let how = if rng.below(10) == 0 {
        // Anywhere in the first 40 ms: often inside Store::open's recovery.
        std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        "early"
    } else {
        // After K acknowledgements, then a little more: inside a later write, at a random phase.
        let k = 1 + rng.below(30) as usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut acks = 0;
        while acks < k {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    acks += l.starts_with("ACK ") as usize;
                    lines.push(l);
                }
                Err(_) => {
                    panic!("torture child made no progress for 20 s (lines so far: {lines:?})")
                }
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(3_000)));
        "after acks"
    };
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "child exited on its own ({status}) instead of being killed"
    );
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    (lines, how)
}

fn record(exp: &mut Expected, lines: &[String]) -> Vec<String> {
    let mut begun_now = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split(' ').collect();
        match f[0] {
            "BEGIN" => {
                exp.begun.push(f[1].to_string());
                begun_now.push(f[1].to_string());
            }
            "ACK" => {
                let key = (f[1].to_string(), f[2].parse().unwrap());
                assert!(
                    exp.acked
                        .insert(key, (f[3].to_string(), f[4].to_string()))
                        .is_none(),
                    "acked twice: {l}"
                );
            }
            "FINISH" => {
                exp.finished.insert(f[1].to_string());
            }
            "ABORT" => {
                exp.aborted.insert(f[1].to_string());
            }
            "OPENED" => assert!(
                l.ends_with("integrity=ok"),
                "child saw a damaged index: {l}"
            ),
            "RETRY" | "DONE" => {}
            _ => panic!("unexpected line {l:?}"),
        }
    }
    begun_now
}

#[test]
fn acknowledged_segments_survive_kill_9() {
    let bin = env!("CARGO_BIN_EXE_gemba-store-torture");
    let seed: u64 = std::env::var("GEMBA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_CAFE);
    eprintln!("crash test seed {seed} (replay with GEMBA_CRASH_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let started = Instant::now();
    let mut exp = Expected::default();
    let mut runs = 0u64;
    let mut cut_off_seen = 0usize;
    let mut recovered_orphans = 0usize;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();

    while exp.begun.len() < MIN_REPORTS {
        runs += 1;
        let (lines, how) = run_child(bin, &dir, seed.wrapping_add(runs), &mut rng);
        *kinds.entry(how).or_default() += 1;
        let begun_now = record(&mut exp, &lines);

        let store = Store::open(&dir, RetentionPolicy::default()).expect("reopening after kill -9");
        let rec = store.recovery();
        assert!(
            rec.integrity_ok(),
            "run {runs}: integrity {:?}",
            rec.integrity
        );
        assert!(
            rec.media_fixed.is_empty(),
            "run {runs}: acknowledged media damaged: {:?}",
            rec.media_fixed
        );
        recovered_orphans += rec.orphans_removed.len() + rec.temp_removed.len();
        let reports = common::assert_consistent(&store);
        let by_id: HashMap<String, _> = reports.iter().map(|r| (r.id.to_string(), r)).collect();

        for ((id, index), (kind, sha)) in &exp.acked {
            let r = by_id
                .get(id)
                .unwrap_or_else(|| panic!("run {runs}: acknowledged report {id} is gone"));
            let s = r
                .segments
                .iter()
                .find(|s| s.index() == *index)
                .unwrap_or_else(|| panic!("run {runs}: acknowledged segment {id}/{index} is gone"));
            assert_eq!(s.kind(), kind, "run {runs}: kind of {id}/{index}");
            assert_eq!(
                s.media().map_or("-", |m| m.sha256.as_str()),
                sha,
                "run {runs}: media of {id}/{index}"
            );
        }
        for r in &reports {
            let id = r.id.to_string();
            // Segments are written one after another: no gaps.
            let indices: Vec<u32> = r.segments.iter().map(|s| s.index()).collect();
            assert_eq!(
                indices,
                (0..indices.len() as u32).collect::<Vec<_>>(),
                "run {runs}: {id} has gaps"
            );
            if exp.finished.contains(&id) {
                assert_eq!(
                    r.status,
                    ReportStatus::Complete,
                    "run {runs}: finished {id}"
                );
            } else if exp.aborted.contains(&id) {
                assert!(
                    matches!(&r.status, ReportStatus::Incomplete { reason } if reason.starts_with("aborted"))
                );
            }
        }
        // The report the kill interrupted: cut off (or, if the kill fell between the commit of
        // finish/abort and its line, closed as said — never open).
        for id in begun_now
            .iter()
            .filter(|id| !exp.finished.contains(*id) && !exp.aborted.contains(*id))
        {
            let r = by_id
                .get(id)
                .unwrap_or_else(|| panic!("run {runs}: begun report {id} is gone"));
            match &r.status {
                ReportStatus::Incomplete { reason } if reason == CUT_OFF_REASON => {
                    cut_off_seen += 1
                }
                ReportStatus::Complete => {}
                ReportStatus::Incomplete { reason } if reason.starts_with("aborted") => {}
                other => panic!("run {runs}: interrupted report {id} is {other}"),
            }
        }
        drop(store);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{runs} kills ({kinds:?}), {} reports begun, {} segments acknowledged, {cut_off_seen} cut off and \
         recovered, {recovered_orphans} leftover files removed, {:.1} s",
        exp.begun.len(),
        exp.acked.len(),
        elapsed.as_secs_f64()
    );
    // The test means something only if kills really landed inside reports.
    assert!(
        cut_off_seen * 2 >= runs as usize,
        "only {cut_off_seen} of {runs} kills cut a report off"
    );
}
