//! Data safety, tried the way a careless admin and a hostile client found the holes: the real
//! `gemba` binary, real file systems (tmpfs mounted by the test, so it needs root, as CI and the
//! dev machines run), real symbolic links to a victim directory of the test's own whose files
//! must survive byte for byte. Everything lives in temporary directories these tests create.
//!
//! - The store's start-up sweep and the updater's gc / recovery never follow a link out of their
//!   trees (a `media/`, `html/`, `staging/` or `cache/` linked elsewhere is refused).
//! - Retention: the free-space floor is proportionate to the file system (the demo on a 50 MB
//!   tmpfs keeps its reports), and a frame larger than the whole quota evicts nothing.
//! - SIGHUP applies a rotated or removed API token and a new listen address, or refuses with a
//!   logged reason.
//! - Updates: an older bundle does not install over a newer one unless signed as a rollback, and
//!   free space is checked before anything is unpacked.

mod common;
mod update_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gemba::report::{ListFilter, ReportStats, ReportStatus, RetentionPolicy, Store, Trigger};

// ---- a victim directory ---------------------------------------------------------------------

/// A directory of someone else's files, some named exactly like the store's and the updater's
/// own, returned with their bytes.
fn make_victim(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let files: &[(&str, &[u8])] = &[
        ("notes.txt", b"the plant's own notes"),
        (
            "2026/12/05/20261205T101530Z-3f2a/0.jpg",
            b"\xff\xd8 not ours",
        ),
        ("2026/12/05/20261205T101530Z-3f2a.html", b"<p>not ours</p>"),
        ("index.html", b"<p>someone's index</p>"),
        (".tmp-half-written", b"someone's temp file"),
        (&"a".repeat(64), b"named like an engine cache"),
        ("deleting-1-1/x", b"named like the updater's trash"),
        ("unpack-1/genai_config.json", b"{}"),
    ];
    let mut out = BTreeMap::new();
    for (rel, bytes) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        out.insert(p, bytes.to_vec());
    }
    out
}

fn assert_victim_intact(victim: &BTreeMap<PathBuf, Vec<u8>>) {
    for (p, bytes) in victim {
        let now =
            std::fs::read(p).unwrap_or_else(|e| panic!("victim file {} is gone: {e}", p.display()));
        assert_eq!(&now, bytes, "victim file {} changed", p.display());
    }
}

/// Replaces `dir` (made by gemba) with a symbolic link to `target`.
fn link_in_place_of(dir: &Path, target: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    std::os::unix::fs::symlink(target, dir).unwrap();
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- a daemon of the test's own -----------------------------------------------------------------

/// `gemba run --config CFG` with stderr collected (GEMBA_LOG=info).
struct Run {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Run {
    fn start(cfg: &Path, extra: &[&str]) -> Run {
        let mut child = gemba()
            .args(["run", "--config"])
            .arg(cfg)
            .args(extra)
            .env("GEMBA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&lines);
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Run { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits for `pred` on the log, failing with the log after `secs`.
    fn wait_log(&mut self, secs: u64, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if pred(&self.log()) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "the daemon exited ({st}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("timed out waiting for {what}:\n{}", self.log());
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM and wait (at most 60 s).
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // the reader thread's last lines
                return (st, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tiny_model() -> PathBuf {
    root().join("models/tiny-qwen2/fp32")
}

/// A daemon config on the tiny model: `data_dir`, `[api]` lines, camera blocks.
fn config(dir: &Path, data_dir: &Path, api: &str, store: &str, cameras: &str) -> PathBuf {
    let cfg = dir.join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            "board = \"x86-dev\"\ndata_dir = \"{}\"\n[model]\npath = \"{}\"\nmax_new_tokens = 24\n\
             [providers]\norder = [\"cpu\"]\nintra_op_threads = 1\n[store]\n{store}\n[api]\n{api}\n{cameras}",
            data_dir.display(),
            tiny_model().display()
        ),
    )
    .unwrap();
    cfg
}

fn camera(name: &str, source: &Path, monitor: bool) -> String {
    format!(
        "[[cameras]]\nname = \"{name}\"\nkind = \"replay\"\nsource = \"{}\"\nfps = 5.0\nmax_interval = \"1s\"\n\
         monitor = {monitor}\nprompt = \"What is the pressure on press 1?\"\n",
        source.display()
    )
}

// ---- finding 1: symlinked store directories ---------------------------------------------------

#[test]
fn a_store_whose_media_or_html_is_a_link_is_refused_and_the_target_survives() {
    for sub in ["media", "html"] {
        let tmp = tempfile::tempdir().unwrap();
        let store_dir = tmp.path().join("store");
        // A real store with a finished report in it.
        {
            let store = Store::open(&store_dir, RetentionPolicy::default()).unwrap();
            let mut w = store.begin(meta(Trigger::Cli, &["press-1"])).unwrap();
            w.add_image(&frame("press-1", 64, 48, 1)).unwrap();
            w.finish(ReportStats::default()).unwrap();
        }
        let victim_dir = tmp.path().join("victim");
        let victim = make_victim(&victim_dir);
        // The admin moves media/ (or html/) to "another disk".
        let moved = tmp.path().join("moved");
        std::fs::rename(store_dir.join(sub), &moved).unwrap();
        std::os::unix::fs::symlink(&victim_dir, store_dir.join(sub)).unwrap();

        write_replay_frames(&tmp.path().join("frames"), 2);
        let cfg = config(
            tmp.path(),
            &store_dir,
            "listen = \"127.0.0.1:0\"",
            "",
            &camera("press-1", &tmp.path().join("frames"), false),
        );
        let out = gemba()
            .args(["run", "--config"])
            .arg(&cfg)
            .args(["--stop-after", "20s"])
            .output()
            .unwrap();
        let t = text(&out);
        assert!(
            !out.status.success(),
            "the daemon started on a store whose {sub}/ is a link:\n{t}"
        );
        assert!(
            t.contains(&format!("{sub} is a symbolic link")),
            "the error names the link:\n{t}"
        );
        assert_victim_intact(&victim);
        // `gemba report` (read-only, no sweep) and a second start do no harm either.
        let _ = gemba()
            .args(["report", "--data"])
            .arg(&store_dir)
            .arg("list")
            .output()
            .unwrap();
        let _ = gemba()
            .args(["run", "--config"])
            .arg(&cfg)
            .args(["--stop-after", "5s"])
            .output()
            .unwrap();
        assert_victim_intact(&victim);
        assert!(victim_dir.join("notes.txt").exists());
    }
}

#[test]
fn the_sweep_deletes_only_what_the_store_wrote() {
    // Inside its own media/ the store removes orphans it can prove it wrote (generated names,
    // temp files), and leaves anything else — and links — alone.
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    drop(Store::open(&store_dir, RetentionPolicy::default()).unwrap());
    let victim = make_victim(&tmp.path().join("victim"));
    let media = store_dir.join("media");
    let own_orphan = media.join("2026/12/05/20261205T101530Z-3f2a/0.jpg");
    std::fs::create_dir_all(own_orphan.parent().unwrap()).unwrap();
    std::fs::write(&own_orphan, b"orphan of a crash").unwrap();
    std::fs::write(media.join("README.txt"), b"an admin's note").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("victim"), media.join("2026/link")).unwrap();
    let store = Store::open(&store_dir, RetentionPolicy::default()).unwrap();
    let rec = store.recovery();
    assert_eq!(
        rec.orphans_removed,
        ["media/2026/12/05/20261205T101530Z-3f2a/0.jpg"]
    );
    assert!(!own_orphan.exists());
    assert_eq!(
        std::fs::read(media.join("README.txt")).unwrap(),
        b"an admin's note"
    );
    let mut kept = rec.foreign_kept.clone();
    kept.sort();
    assert_eq!(kept, ["media/2026/link", "media/README.txt"]);
    assert_victim_intact(&victim);
}

// ---- finding 1: the updater's staging/ and cache/ ---------------------------------------------

#[test]
fn the_updater_never_deletes_through_a_linked_staging_or_cache() {
    use update_support::Fleet;
    let fleet = Fleet::new();
    for sub in ["staging", "cache"] {
        let (root, state) = fleet.root_with_v1(&format!("link-{sub}"));
        let victim_dir = fleet.path(&format!("victim-{sub}"));
        let victim = make_victim(&victim_dir);
        link_in_place_of(&root.join(sub), &victim_dir);
        for args in [
            vec!["gc"],
            vec!["recover"],
            vec!["install", "--no-daemon", fleet.v2.to_str().unwrap()],
        ] {
            let out = fleet.model(&root, &state).args(&args).output().unwrap();
            let t = text(&out);
            assert!(
                !out.status.success(),
                "gemba model {args:?} ran with {sub}/ a link:\n{t}"
            );
            assert!(
                t.contains("symbolic link") && t.contains(sub),
                "gemba model {args:?}: {t}"
            );
            assert_victim_intact(&victim);
        }
        assert_eq!(
            update_support::current(&root).as_deref(),
            Some("1"),
            "nothing changed"
        );
    }
    // Inside a real cache/, gc removes only engine caches it made (named by bundle hash).
    let (root, state) = fleet.root_with_v1("foreign-cache");
    let foreign = root.join("cache/site-notes");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("keep.txt"), b"ours, not gemba's").unwrap();
    let stale = root.join("cache").join("b".repeat(64));
    std::fs::create_dir_all(&stale).unwrap();
    let out = fleet.model(&root, &state).arg("gc").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(foreign.join("keep.txt")).unwrap(),
        b"ours, not gemba's"
    );
    assert!(
        !stale.exists(),
        "an engine cache of no installed bundle is gc'd"
    );
}

// ---- finding 2: the free-space floor on a small file system ------------------------------------

#[test]
fn the_demo_on_a_50_mb_file_system_keeps_its_reports() {
    let fs = Tmpfs::mount("50M");
    let tmp = tempfile::tempdir().unwrap();
    let demo = root().join("models/demo");
    let mut cams = String::new();
    for (name, glob) in [
        ("press-2", "press-2_*.jpg"),
        ("belt-1", "belt-1_*.jpg"),
        ("line-3", "line-3_*.jpg"),
    ] {
        cams.push_str(&format!(
            "[[cameras]]\nname = \"{name}\"\nkind = \"replay\"\nsource = \"{}\"\nfps = 2.0\nmax_interval = \"1s\"\nprompt = \"Give me a status report.\"\n",
            demo.join("frames").join(glob).display()
        ));
    }
    let cfg = tmp.path().join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            "board = \"x86-dev\"\ndata_dir = \"{}\"\n[model]\npath = \"{}\"\nmax_new_tokens = 80\n[providers]\norder = [\"cpu\"]\n\
             [store]\nmax_bytes = \"256MiB\"\n[api]\nlisten = \"127.0.0.1:0\"\n{cams}",
            fs.path.join("store").display(),
            demo.display()
        ),
    )
    .unwrap();
    let mut run = Run::start(&cfg, &[]);
    run.wait_log(240, "17 finished reports", |_| {
        count_finished(&fs.path.join("store")) >= 17
    });
    let (st, log) = run.stop();
    assert!(st.success(), "{log}");
    let store = Store::open_read_only(fs.path.join("store")).unwrap();
    let complete = store
        .list(&ListFilter::default())
        .unwrap()
        .iter()
        .filter(|r| r.status == ReportStatus::Complete)
        .count();
    let evicted = log
        .lines()
        .filter(|l| l.contains("evicted by retention"))
        .count();
    assert!(
        complete >= 17,
        "{complete} complete reports kept on a 50 MB file system:\n{log}"
    );
    assert_eq!(
        evicted, 0,
        "reports were evicted with plenty of room left:\n{log}"
    );
}

fn count_finished(store: &Path) -> usize {
    Store::open_read_only(store)
        .and_then(|s| s.list(&ListFilter::default()))
        .map(|l| {
            l.iter()
                .filter(|r| r.status == ReportStatus::Complete)
                .count()
        })
        .unwrap_or(0)
}

// ---- finding 3: a frame larger than the whole quota ----------------------------------------------

/// A JPEG of noise (which compresses badly), `w`×`h`.
fn noise_jpeg(path: &Path, w: u16, h: u16) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let rgb: Vec<u8> = (0..w as usize * h as usize * 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    jpeg_encoder::Encoder::new_file(path, 100)
        .unwrap()
        .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
}

#[test]
fn a_frame_larger_than_the_quota_evicts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    write_replay_frames(&tmp.path().join("small"), 4);
    let huge = tmp.path().join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    noise_jpeg(&huge.join("big.jpg"), 2400, 1800);
    let size = std::fs::metadata(huge.join("big.jpg")).unwrap().len();
    assert!(
        size > 4 << 20,
        "the test frame is {size} bytes, not more than the 4 MiB quota"
    );
    let store_dir = tmp.path().join("store");
    let cams = camera("small", &tmp.path().join("small"), true);
    let cfg = config(
        tmp.path(),
        &store_dir,
        "listen = \"127.0.0.1:0\"",
        "max_bytes = \"4MiB\"",
        &cams,
    );
    // First the small camera alone: eight complete reports.
    let mut run = Run::start(&cfg, &[]);
    run.wait_log(120, "8 reports", |_| count_finished(&store_dir) >= 8);
    let (st, log) = run.stop();
    assert!(st.success(), "{log}");
    let before: Vec<String> = Store::open_read_only(&store_dir)
        .unwrap()
        .list(&ListFilter::default())
        .unwrap()
        .iter()
        .filter(|r| r.status == ReportStatus::Complete)
        .map(|r| r.id.to_string())
        .collect();
    assert!(before.len() >= 8);
    // Then a camera whose frame is larger than the whole quota.
    let cams = format!(
        "{}{}",
        camera("small", &tmp.path().join("small"), false),
        camera("huge", &huge, true)
    );
    let cfg = config(
        tmp.path(),
        &store_dir,
        "listen = \"127.0.0.1:0\"",
        "max_bytes = \"4MiB\"",
        &cams,
    );
    let mut run = Run::start(&cfg, &[]);
    run.wait_log(120, "the huge frame refused", |l| {
        l.contains("cannot be stored")
    });
    let (_, log) = run.stop();
    assert!(log.contains("nothing was evicted"), "{log}");
    assert_eq!(log.matches("evicted by retention").count(), 0, "{log}");
    let store = Store::open_read_only(&store_dir).unwrap();
    let after: Vec<String> = store
        .list(&ListFilter::default())
        .unwrap()
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    let lost: Vec<&String> = before.iter().filter(|id| !after.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} earlier reports lost: {lost:?}\n{log}",
        lost.len(),
        before.len()
    );
}

// ---- finding 5: SIGHUP applies the API's token and listen address --------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET /status on `port` with this bearer token: the status code, or 0 when nothing listens.
fn status_code(port: u16, token: Option<&str>) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.get(format!("http://127.0.0.1:{port}/status"));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

fn wait_for(secs: u64, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn sighup_rotates_the_token_and_moves_the_listener() {
    let tmp = tempfile::tempdir().unwrap();
    write_replay_frames(&tmp.path().join("frames"), 2);
    let cams = camera("press-1", &tmp.path().join("frames"), false);
    let token_file = tmp.path().join("token");
    let (t1, t2) = ("first-token-0123456789", "second-token-9876543210");
    std::fs::write(&token_file, t1).unwrap();
    let (p1, p2) = (free_port(), free_port());
    let api = |port: u16, extra: &str| format!("listen = \"127.0.0.1:{port}\"\n{extra}");
    let with_file = format!("token_file = \"{}\"", token_file.display());
    let store = tmp.path().join("store");
    let cfg = config(tmp.path(), &store, &api(p1, &with_file), "", &cams);
    let mut run = Run::start(&cfg, &[]);
    run.wait_log(60, "serving", |l| l.contains("gemba: serving"));
    assert_eq!(status_code(p1, Some(t1)), 200);
    assert_eq!(status_code(p1, Some(t2)), 401);

    // The token file is rotated: after SIGHUP the new token works and the old one is refused.
    std::fs::write(&token_file, t2).unwrap();
    run.signal(libc::SIGHUP);
    wait_for(30, "the rotated token", || status_code(p1, Some(t2)) == 200);
    assert_eq!(
        status_code(p1, Some(t1)),
        401,
        "the old token still works after rotation"
    );
    assert!(
        run.count("token rotated") >= 1,
        "the reload logs the rotation:\n{}",
        run.log()
    );

    // A new listen address: served there, no longer on the old one; the token still holds.
    config(tmp.path(), &store, &api(p2, &with_file), "", &cams);
    run.signal(libc::SIGHUP);
    wait_for(30, "the new address", || status_code(p2, Some(t2)) == 200);
    wait_for(30, "the old address to close", || {
        status_code(p1, Some(t2)) == 0
    });
    assert_eq!(status_code(p2, None), 401);

    // Exposing the API on all interfaces without a token is refused: nothing changes.
    config(
        tmp.path(),
        &store,
        &api(free_port(), "").replace("127.0.0.1", "0.0.0.0"),
        "",
        &cams,
    );
    run.signal(libc::SIGHUP);
    run.wait_log(30, "the refused reload", |l| {
        l.contains("keeping the running one") && l.contains("no token is set")
    });
    assert_eq!(status_code(p2, Some(t2)), 200);
    assert_eq!(
        status_code(p2, None),
        401,
        "a refused reload removed the token"
    );

    // A listen address that is taken: the API part of the reload is refused, and said so.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    config(tmp.path(), &store, &api(taken_port, ""), "", &cams);
    run.signal(libc::SIGHUP);
    run.wait_log(30, "the refused rebind", |l| {
        l.contains("reload: api: refused")
    });
    assert_eq!(status_code(p2, Some(t2)), 200, "still served where it was");
    assert_eq!(
        status_code(p2, None),
        401,
        "the token stays with the refused reload"
    );
    drop(taken);

    // The token removed on a loopback address: requests need none.
    config(tmp.path(), &store, &api(p2, ""), "", &cams);
    run.signal(libc::SIGHUP);
    wait_for(30, "the token removed", || status_code(p2, None) == 200);
    assert!(run.count("token removed") >= 1, "{}", run.log());
    let (st, log) = run.stop();
    assert!(st.success(), "{log}");
}

// ---- updates: downgrades and free space ----------------------------------------------------------

#[test]
fn an_older_bundle_does_not_install_over_a_newer_one_unless_signed_as_a_rollback() {
    use gemba::update::pack::{pack, PackOptions};
    use update_support::{current, int4, opts, Fleet};
    let fleet = Fleet::new();
    let (root, state) = fleet.root_with_v1("downgrade");
    let out = fleet
        .model(&root, &state)
        .args(["install", "--no-daemon"])
        .arg(&fleet.v2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(current(&root).as_deref(), Some("2"));
    // Version 1 again (other content than the installed 1 would be a conflict; a new archive of
    // version "1.5" is older than 2 as well).
    let old = fleet.path("v1.5.tar");
    pack(&int4(), &fleet.signing_key(), &opts("1.5"), &old).unwrap();
    let out = fleet
        .model(&root, &state)
        .args(["install", "--no-daemon"])
        .arg(&old)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        !out.status.success(),
        "an older bundle installed over a newer one:\n{t}"
    );
    assert!(
        t.contains("older than the installed 2") && t.contains("--allow-downgrade"),
        "{t}"
    );
    assert_eq!(current(&root).as_deref(), Some("2"));
    // Signed as an allowed rollback, it installs.
    let allowed = fleet.path("v1.6.tar");
    pack(
        &int4(),
        &fleet.signing_key(),
        &PackOptions {
            allow_downgrade: true,
            ..opts("1.6")
        },
        &allowed,
    )
    .unwrap();
    let out = fleet
        .model(&root, &state)
        .args(["install", "--no-daemon"])
        .arg(&allowed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(current(&root).as_deref(), Some("1.6"));
}

#[test]
fn install_checks_free_space_before_unpacking() {
    use update_support::{current, Fleet};
    let fleet = Fleet::new();
    // A models root on a file system smaller than the bundle.
    let fs = Tmpfs::mount("1M");
    let root = fs.path.join("models");
    let state = fleet.path("nospace-state");
    std::fs::create_dir_all(&state).unwrap();
    let out = fleet
        .model(&root, &state)
        .args(["install", "--no-daemon"])
        .arg(&fleet.v1)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("bytes free; nothing was unpacked"), "{t}");
    assert_eq!(current(&root), None);
    let staged: Vec<_> = std::fs::read_dir(root.join("staging")).unwrap().collect();
    assert!(staged.is_empty(), "staging holds {staged:?}");
}
