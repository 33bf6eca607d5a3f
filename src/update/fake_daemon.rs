//! A stand-in daemon that honours the update contract, for tests and for trying the update flow
//! without the real daemon (`gemba model fake-daemon`, hidden).
//!
//! It resolves `<root>/current`, loads it with the real engine, runs the manifest's smoke prompt
//! (so `ready` means it really answers), writes `status.json` atomically, and reloads on SIGHUP.
//! It can be told to misbehave on given versions: report a failed health check, crash while
//! loading, or turn unhealthy some time after becoming ready; and to ignore SIGHUP.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::daemon::{write_status, DaemonStatus};
use super::layout::{cache_dir, identify};
use super::smoke::run_smoke;
use super::state::now;
use super::UpdateError;
use crate::model::providers::ProviderPolicy;
use crate::model::{runtime, Engine};

#[derive(Debug, Clone, Default)]
pub struct FakeDaemonOptions {
    pub models_dir: PathBuf,
    pub state_dir: PathBuf,
    pub onnxruntime: Option<PathBuf>,
    /// Report `ready: false, smoke_ok: false` on these versions.
    pub fail_versions: Vec<String>,
    /// Exit with status 3 while loading these versions.
    pub crash_versions: Vec<String>,
    /// Turn unhealthy this long after becoming ready on `degrade_versions`.
    pub degrade_versions: Vec<String>,
    pub degrade_after: Duration,
    /// Do nothing on SIGHUP.
    pub ignore_reload: bool,
}

pub fn run(opts: &FakeDaemonOptions) -> Result<(), UpdateError> {
    let hup = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    let sig = |e: std::io::Error| UpdateError::io("signal handler", e);
    signal_hook::flag::register(libc::SIGHUP, hup.clone()).map_err(sig)?;
    signal_hook::flag::register(libc::SIGTERM, term.clone()).map_err(sig)?;
    signal_hook::flag::register(libc::SIGINT, term.clone()).map_err(sig)?;
    let mut engine: Option<Engine> = None;
    let mut status = load(opts, &mut engine)?;
    let mut ready_since = Instant::now();
    loop {
        if term.load(Ordering::SeqCst) {
            eprintln!("fake-daemon: stopping");
            return Ok(());
        }
        if hup.swap(false, Ordering::SeqCst) {
            if opts.ignore_reload {
                eprintln!("fake-daemon: SIGHUP ignored");
            } else {
                eprintln!("fake-daemon: SIGHUP: reloading");
                status = load(opts, &mut engine)?;
                ready_since = Instant::now();
            }
        }
        let degrade = status.ready
            && status
                .bundle_id
                .as_ref()
                .is_some_and(|v| opts.degrade_versions.contains(v))
            && ready_since.elapsed() >= opts.degrade_after;
        if degrade {
            status.ready = false;
            status.error =
                Some("injected: degraded after becoming ready (--degrade-version)".into());
            write_status(&opts.state_dir, &status)?;
            eprintln!("fake-daemon: degraded");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn load(
    opts: &FakeDaemonOptions,
    engine: &mut Option<Engine>,
) -> Result<DaemonStatus, UpdateError> {
    *engine = None;
    let mut st = DaemonStatus {
        pid: std::process::id(),
        loaded_at: Some(now()),
        ..Default::default()
    };
    let current = opts.models_dir.join("current");
    let dir = match std::fs::canonicalize(&current) {
        Ok(d) => d,
        Err(e) => {
            st.error = Some(format!("no model: {}: {e}", current.display()));
            write_status(&opts.state_dir, &st)?;
            return Ok(st);
        }
    };
    st.bundle_dir = Some(dir.clone());
    match identify(&dir) {
        Err(e) => st.error = Some(e.to_string()),
        Ok(id) => {
            st.bundle_id = Some(id.id.clone());
            st.bundle_hash = Some(id.hash.clone());
            if opts.crash_versions.contains(&id.id) {
                eprintln!("fake-daemon: injected crash while loading {}", id.id);
                std::process::exit(3);
            }
            let loaded = runtime::init(opts.onnxruntime.as_deref())
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    let mut policy = ProviderPolicy::default();
                    policy.tensorrt.cache_dir = Some(cache_dir(&opts.models_dir, &id.hash));
                    Engine::load(rt, &dir, &policy).map_err(|e| e.to_string())
                });
            match loaded {
                Err(e) => st.error = Some(format!("load: {e}")),
                Ok(mut e) => {
                    let reply = run_smoke(&mut e, &id.manifest.smoke, &mut |_| {});
                    match reply {
                        Err(err) => {
                            st.smoke_ok = Some(false);
                            st.error = Some(format!("smoke: {err}"));
                        }
                        Ok(reply) => {
                            st.smoke_ok = Some(reply.contains(&id.manifest.smoke.expect_contains));
                            st.extra.insert("reply".into(), reply.into());
                        }
                    }
                    if opts.fail_versions.contains(&id.id) {
                        st.smoke_ok = Some(false);
                        st.error = Some(format!(
                            "injected health failure on {} (--fail-version)",
                            id.id
                        ));
                    }
                    st.ready = st.smoke_ok == Some(true);
                    *engine = Some(e);
                }
            }
        }
    }
    write_status(&opts.state_dir, &st)?;
    eprintln!(
        "fake-daemon: loaded {} ready={} smoke_ok={:?} error={:?}",
        st.bundle_id.as_deref().unwrap_or("-"),
        st.ready,
        st.smoke_ok,
        st.error
    );
    Ok(st)
}
