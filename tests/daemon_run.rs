//! `gemba::daemon::run(settings, shutdown)` in this process, driven by the test's own shutdown
//! future (as `gemba run` drives it with SIGTERM/SIGINT): a stop during start-up returns at once
//! without serving; a stop while serving closes what is in flight, writes `status.json` as not
//! ready and leaves only closed reports behind.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ort_lib, root};
use gemba::config::Settings;
use gemba::daemon::status::read_status;
use gemba::report::{ListFilter, ReportStatus, RetentionPolicy, Store};

fn settings(dir: &Path) -> Settings {
    let demo = root().join("models/demo");
    let text = format!(
        "board = \"x86-dev\"\ndata_dir = \"store\"\n[model]\npath = \"{}\"\nmax_new_tokens = 40\n\
         [providers]\norder = [\"cpu\"]\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
         [[cameras]]\nname = \"press-2\"\nkind = \"replay\"\nsource = \"{}\"\nfps = 2.0\n\
         prompt = \"Give me a status report.\"\nmax_interval = \"1s\"\n",
        demo.display(),
        demo.join("frames/press-2_00.jpg").display()
    );
    let mut s = Settings::from_str(&text, &dir.join("gemba.toml"), dir).unwrap();
    s.onnxruntime = Some(ort_lib("1.31.1"));
    s
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_stop_during_start_up_returns_without_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(tmp.path());
    let state = s.state_dir.clone();
    let rt = runtime();
    let t0 = Instant::now();
    rt.block_on(gemba::daemon::run(s, async { "test stop" }))
        .expect("a stop during start-up is not an error");
    rt.shutdown_timeout(Duration::from_secs(5));
    assert!(
        read_status(&state).unwrap().is_none(),
        "status.json was written although the daemon never served"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the stop did not end start-up"
    );
}

#[test]
fn a_stop_while_serving_closes_every_report_and_clears_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(tmp.path());
    let (state, data) = (s.state_dir.clone(), s.data_dir.clone());
    let rt = runtime();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = rt.spawn(gemba::daemon::run(s, async move {
        let _ = stop_rx.await;
        "test stop"
    }));
    // Serving: status.json says ready, and the monitor's looks become reports.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = read_status(&state) {
            ready |= st.ready;
        }
        let done = Store::open_read_only(&data)
            .ok()
            .and_then(|store| store.list(&ListFilter::default()).ok())
            .is_some_and(|l| l.iter().any(|r| r.status == ReportStatus::Complete));
        if ready && done {
            break;
        }
        assert!(!daemon.is_finished(), "the daemon stopped by itself");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ready, "status.json never said ready");
    stop_tx.send(()).unwrap();
    rt.block_on(daemon)
        .unwrap()
        .expect("the daemon stopped cleanly");
    rt.shutdown_timeout(Duration::from_secs(5));

    let st = read_status(&state).unwrap().expect("status.json");
    assert!(!st.ready, "status.json still says ready after the stop");
    assert_eq!(st.pid, std::process::id());
    let store = Store::open(&data, RetentionPolicy::default()).unwrap();
    let reports = store.list(&ListFilter::default()).unwrap();
    assert!(
        reports.iter().any(|r| r.status == ReportStatus::Complete),
        "no complete report: {reports:?}"
    );
    assert!(
        reports.iter().all(|r| r.status != ReportStatus::Open),
        "a report was left open by the stop: {reports:?}"
    );
}
