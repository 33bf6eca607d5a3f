//! The driver: install, manual rollback and crash recovery walk the state machine; list and gc
//! look after `versions/`.
//!
//! Every entry point takes the root's lock first and finishes an interrupted attempt
//! ([`recover`]) before doing anything else, so the state it starts from is always terminal.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::daemon;
use super::fsutil;
use super::keys::TrustedKeys;
use super::layout::{self, cache_dir, identify, verify_installed, Check, Root, CURRENT, PREVIOUS};
use super::manifest::{version_cmp, MANIFEST_NAME};
use super::smoke::smoke_test;
use super::state::{now, Attempt, AttemptKind, Machine, Observer, State};
use super::unpack::{verify_archive, SignedManifest};
use super::{gemba_version, IoAt, UpdateConfig, UpdateError};
use crate::model::providers::ProviderPolicy;

/// What an install or rollback needs besides the archive.
pub struct InstallContext<'a> {
    pub config: &'a UpdateConfig,
    /// Providers for the smoke test: the daemon's, so that the same engines are built.
    pub policy: &'a ProviderPolicy,
    /// `--onnxruntime` / the config's library path, for the smoke test.
    pub onnxruntime: Option<&'a Path>,
    /// Skip the daemon and its health gate.
    pub no_daemon: bool,
    /// Called after every persisted transition.
    pub observer: Option<Observer<'a>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The version is active and passed the gate (or the gate was skipped: `gate` says which).
    Installed {
        version: String,
        bundle_hash: String,
        gate: String,
    },
    /// That exact bundle was already `current`; nothing changed.
    AlreadyActive {
        version: String,
        bundle_hash: String,
    },
}

fn unpack_bar() -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} verify+unpack [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb
}

/// Installs a bundle archive: verify → unpack → smoke → switch → reload → health gate, rolling
/// back on a failed gate. `Err` carries the precise reason, which is also the recorded state's.
pub fn install(archive: &Path, ctx: &InstallContext) -> Result<Outcome, UpdateError> {
    let root = Root::create(&ctx.config.models_dir)?;
    let _lock = fsutil::lock(&root.lock_file())?;
    let mut m = Machine::load(&root.dir, ctx.observer)?;
    recover_locked(&root, &mut m, !ctx.no_daemon, ctx.config)?;
    let keys = TrustedKeys::load(&ctx.config.trusted_keys)?;
    if !ctx.no_daemon {
        daemon::probe(&ctx.config.state_dir)?;
    }
    let archive = std::path::absolute(archive).unwrap_or_else(|_| archive.to_path_buf());
    let from = root.link_version(CURRENT)?;
    let from_previous = root.link_version(PREVIOUS)?;
    m.begin(Attempt {
        kind: AttemptKind::Install,
        archive: Some(archive.clone()),
        version: None,
        bundle_hash: None,
        key_id: None,
        fresh: false,
        from: from.clone(),
        from_previous,
        pid: std::process::id(),
        started_at: now(),
        gate: None,
        note: None,
    })?;

    // Verify while unpacking into staging/; the policy sees the verified manifest first.
    fsutil::clear_dir(&root.staging())?;
    let staging = root
        .staging()
        .join(format!("unpack-{}", std::process::id()));
    let pb = unpack_bar();
    let mut policy = |s: &SignedManifest| check_policy(&root, ctx.config, s);
    let verified = verify_archive(&archive, &keys, &mut policy, Some(&staging), &pb);
    pb.finish_and_clear();
    let verified = match verified.and_then(|v| check_model_type(&staging, &v.signed).map(|_| v)) {
        Ok(v) => v,
        Err(e) => return reject(&root, &mut m, None, e),
    };
    let s = &verified.signed;
    let version = s.manifest.version.clone();
    {
        let a = m.attempt_mut();
        a.version = Some(version.clone());
        a.bundle_hash = Some(s.bundle_hash.clone());
        a.key_id = Some(s.key_id.clone());
    }
    log::info!(
        "update: {} verified: bundle {version} ({}), signed by {}, {} files, archive sha256 {}",
        archive.display(),
        daemon::short(&s.bundle_hash),
        s.key_id,
        s.manifest.files.len(),
        daemon::short(&verified.archive_sha256)
    );

    if from.as_deref() == Some(version.as_str()) {
        // The policy refused a different bundle under the same version, so this is the same one.
        fsutil::clear_dir(&root.staging())?;
        m.attempt_mut().note = Some(format!(
            "bundle {version} is already active; nothing changed"
        ));
        m.transition_to(State::Healthy)?;
        return Ok(Outcome::AlreadyActive {
            version,
            bundle_hash: s.bundle_hash.clone(),
        });
    }
    let vdir = root.version_dir(&version);
    if vdir.exists() {
        // Installed before with the same content (e.g. a version rolled back to).
        fsutil::clear_dir(&root.staging())?;
    } else {
        // Recorded before the rename, so that recovery knows to delete it.
        m.attempt_mut().fresh = true;
        m.save()?;
        std::fs::rename(&staging, &vdir).map_err(|e| UpdateError::io(&vdir, e))?;
        crate::sys::fs::sync_dir(&root.versions()).at(&root.versions())?;
    }
    m.transition_to(State::Unpacked)?;
    let manifest = s.manifest.clone();
    let hash = s.bundle_hash.clone();
    finish_from_unpacked(&root, &mut m, ctx, &version, &hash, &manifest.smoke)
}

/// Smoke → switch → reload → gate, shared by install and manual rollback.
fn finish_from_unpacked(
    root: &Root,
    m: &mut Machine,
    ctx: &InstallContext,
    version: &str,
    hash: &str,
    smoke: &super::manifest::SmokeSpec,
) -> Result<Outcome, UpdateError> {
    let vdir = root.version_dir(version);
    if let Err(e) = smoke_test(
        ctx.onnxruntime,
        &vdir,
        version,
        smoke,
        ctx.policy,
        &cache_dir(&root.dir, hash),
    ) {
        return reject(root, m, Some(version), e);
    }
    m.transition_to(State::Smoked)?;

    let from = m.attempt().and_then(|a| a.from.clone());
    if let Some(f) = &from {
        root.point(PREVIOUS, Some(f))?;
    }
    root.point(CURRENT, Some(version))?;
    crate::sys::fs::sync_dir(&root.dir).at(&root.dir)?;
    m.transition_to(State::Switched)?;

    if ctx.no_daemon {
        m.attempt_mut().gate = Some("skipped (--no-daemon)".into());
        m.transition_to(State::Healthy)?;
        return Ok(Outcome::Installed {
            version: version.into(),
            bundle_hash: hash.into(),
            gate: "skipped (--no-daemon)".into(),
        });
    }
    let since = match daemon::reload(&ctx.config.state_dir) {
        Ok(t) => t,
        Err(r) => {
            return Err(roll_back(
                root,
                m,
                ctx,
                format!("could not tell the daemon to reload: {r}"),
            ))
        }
    };
    m.transition_to(State::Reloaded)?;
    match daemon::wait_healthy(
        &ctx.config.state_dir,
        hash,
        since,
        ctx.config.health_timeout,
        ctx.config.health_hold,
    ) {
        Ok(s) => {
            let gate = format!(
                "passed (daemon pid {} ready on {})",
                s.pid,
                daemon::short(hash)
            );
            m.attempt_mut().gate = Some(gate.clone());
            m.transition_to(State::Healthy)?;
            Ok(Outcome::Installed {
                version: version.into(),
                bundle_hash: hash.into(),
                gate,
            })
        }
        Err(reason) => Err(roll_back(root, m, ctx, reason)),
    }
}

/// Refused before the switch: clean up what this attempt made, record why.
fn reject(
    root: &Root,
    m: &mut Machine,
    version: Option<&str>,
    e: UpdateError,
) -> Result<Outcome, UpdateError> {
    let fresh = m.attempt().is_some_and(|a| a.fresh);
    if let (true, Some(v)) = (fresh, version) {
        fsutil::remove_tree(&root.version_dir(v), &root.staging())?;
    }
    fsutil::clear_dir(&root.staging())?;
    m.transition_to(State::Rejected {
        reason: e.to_string(),
    })?;
    Err(e)
}

/// After the switch: point everything back, tell the daemon, delete what this attempt made.
fn roll_back(root: &Root, m: &mut Machine, ctx: &InstallContext, reason: String) -> UpdateError {
    match roll_back_inner(root, m, ctx, &reason) {
        Ok(e) => e,
        Err(e) => e,
    }
}

fn roll_back_inner(
    root: &Root,
    m: &mut Machine,
    ctx: &InstallContext,
    reason: &str,
) -> Result<UpdateError, UpdateError> {
    m.attempt_mut().gate = Some(format!("failed: {reason}"));
    m.transition_to(State::RollingBack {
        reason: reason.into(),
    })?;
    let a = m.attempt().expect("attempt in flight").clone();
    restore(root, &a)?;
    if !ctx.no_daemon {
        let note = tell_daemon_back(root, &a, ctx.config);
        m.attempt_mut().note = Some(note);
    }
    delete_fresh(root, &a)?;
    m.transition_to(State::RolledBack {
        reason: reason.into(),
    })?;
    Ok(UpdateError::RolledBack {
        version: a.version.clone().unwrap_or_default(),
        reason: reason.into(),
        rolled_back_to: a
            .from
            .clone()
            .unwrap_or_else(|| "no model (there was none before)".into()),
    })
}

/// SIGHUP so the daemon goes back to the old bundle, and wait for it (best effort: the layout is
/// already restored; the note says whether the daemon confirmed).
fn tell_daemon_back(root: &Root, a: &Attempt, cfg: &UpdateConfig) -> String {
    let Some(from) = &a.from else {
        return "no earlier bundle to return the daemon to".into();
    };
    let hash = match identify(&root.version_dir(from)) {
        Ok(id) => id.hash,
        Err(e) => return format!("cannot identify {from}: {e}"),
    };
    match daemon::reload(&cfg.state_dir) {
        Err(e) => format!("daemon not told to reload after the rollback: {e}"),
        Ok(since) => match daemon::wait_healthy(
            &cfg.state_dir,
            &hash,
            since,
            cfg.health_timeout,
            std::time::Duration::ZERO,
        ) {
            Ok(s) => format!(
                "daemon pid {} serves {from} ({}) again",
                s.pid,
                daemon::short(&hash)
            ),
            Err(e) => format!("daemon did not confirm {from} after the rollback: {e}"),
        },
    }
}

/// Puts `current` and `previous` back as they were before the attempt. Idempotent.
fn restore(root: &Root, a: &Attempt) -> Result<(), UpdateError> {
    root.point(CURRENT, a.from.as_deref())?;
    root.point(PREVIOUS, a.from_previous.as_deref())?;
    crate::sys::fs::sync_dir(&root.dir).at(&root.dir)
}

/// Deletes the version this attempt unpacked, unless a link still names it.
fn delete_fresh(root: &Root, a: &Attempt) -> Result<(), UpdateError> {
    if let (true, Some(v)) = (a.fresh, a.version.as_deref()) {
        if a.from.as_deref() != Some(v) && a.from_previous.as_deref() != Some(v) {
            fsutil::remove_tree(&root.version_dir(v), &root.staging())?;
        }
    }
    fsutil::clear_dir(&root.staging())
}

/// Manifest-level checks, before any file is unpacked.
fn check_policy(root: &Root, cfg: &UpdateConfig, s: &SignedManifest) -> Result<(), UpdateError> {
    let m = &s.manifest;
    let min = semver::Version::parse(&m.min_gemba).expect("validated");
    let ours = gemba_version();
    if min > ours {
        return Err(UpdateError::TooNew {
            version: m.version.clone(),
            min: m.min_gemba.clone(),
            ours: ours.to_string(),
        });
    }
    if !cfg.accept_model_types.is_empty()
        && !cfg.accept_model_types.iter().any(|t| t == &m.model_type)
    {
        return Err(UpdateError::ModelTypeNotAccepted {
            version: m.version.clone(),
            model_type: m.model_type.clone(),
            accepted: cfg.accept_model_types.join(", "),
        });
    }
    if let Some(cur) = root.link_version(CURRENT)? {
        if !m.allow_downgrade && version_cmp(&m.version, &cur) == std::cmp::Ordering::Less {
            return Err(UpdateError::Downgrade {
                version: m.version.clone(),
                current: cur,
            });
        }
    }
    // Room to unpack, before a byte is written (the manifest lists every file with its size);
    // a little over, for directories and the manifest itself.
    let needed = m.files.iter().map(|f| f.size).sum::<u64>() + (1 << 20);
    if let Ok(free) = crate::report::durable::free_bytes(&root.staging()) {
        if needed > free {
            return Err(UpdateError::NoSpace {
                version: m.version.clone(),
                path: root.staging(),
                needed,
                free,
            });
        }
    }
    let vdir = root.version_dir(&m.version);
    if vdir.join(MANIFEST_NAME).exists() {
        let installed = identify(&vdir)?;
        if installed.hash != s.bundle_hash {
            return Err(UpdateError::VersionConflict {
                version: m.version.clone(),
                installed: daemon::short(&installed.hash).into(),
                new: daemon::short(&s.bundle_hash).into(),
            });
        }
    }
    Ok(())
}

/// The manifest's model type must be the one genai_config.json declares.
fn check_model_type(dir: &Path, s: &SignedManifest) -> Result<(), UpdateError> {
    let p = dir.join("genai_config.json");
    let bytes = std::fs::read(&p).map_err(|e| UpdateError::io(&p, e))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| UpdateError::ModelTypeMismatch {
            version: s.manifest.version.clone(),
            manifest: s.manifest.model_type.clone(),
            config: format!("(unreadable: {e})"),
        })?;
    let t = v
        .pointer("/model/type")
        .and_then(|t| t.as_str())
        .unwrap_or("(none)");
    if t != s.manifest.model_type {
        return Err(UpdateError::ModelTypeMismatch {
            version: s.manifest.version.clone(),
            manifest: s.manifest.model_type.clone(),
            config: t.into(),
        });
    }
    Ok(())
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecoverReport {
    /// The state the record was in.
    pub found: String,
    /// What was done (empty: nothing was needed).
    pub actions: Vec<String>,
    /// The version `current` points at now.
    pub current: Option<String>,
}

/// Finishes an interrupted attempt (restoring the pre-attempt layout) and makes sure `current`
/// resolves to a complete version. For systemd's `ExecStartPre=` of the daemon, and run first by
/// every other entry point.
pub fn recover(cfg: &UpdateConfig) -> Result<RecoverReport, UpdateError> {
    let root = Root::create(&cfg.models_dir)?;
    let _lock = fsutil::lock(&root.lock_file())?;
    let mut m = Machine::load(&root.dir, None)?;
    recover_locked(&root, &mut m, true, cfg)
}

fn recover_locked(
    root: &Root,
    m: &mut Machine,
    tell_daemon: bool,
    cfg: &UpdateConfig,
) -> Result<RecoverReport, UpdateError> {
    let found = m.state().clone();
    let mut actions = Vec::new();
    if !found.is_terminal() {
        let a = m.attempt().cloned().ok_or_else(|| UpdateError::State {
            path: root.state_file(),
            detail: format!("state {} without an attempt", found.name()),
        })?;
        let current_now = root.link_version(CURRENT).ok().flatten();
        let switched = matches!(
            found,
            State::Switched | State::Reloaded | State::RollingBack { .. }
        ) || (found == State::Smoked && current_now != a.from);
        let reason = match &found {
            State::RollingBack { reason } => format!("{reason} (rollback finished by recovery)"),
            s => format!(
                "interrupted at {} (power cut, kill or crash); the previous layout was restored",
                s.name()
            ),
        };
        if switched && !matches!(found, State::RollingBack { .. }) {
            m.transition_to(State::RollingBack {
                reason: reason.clone(),
            })?;
        }
        restore(root, &a)?;
        delete_fresh(root, &a)?;
        if switched {
            m.transition_to(State::RolledBack {
                reason: reason.clone(),
            })?;
            if tell_daemon {
                if let Ok(Some(s)) = daemon::read_status(&cfg.state_dir) {
                    if daemon::is_gemba_alive(s.pid) {
                        let _ = daemon::reload(&cfg.state_dir);
                        actions.push(format!("told the daemon (pid {}) to reload", s.pid));
                    }
                }
            }
        } else {
            m.transition_to(State::Rejected {
                reason: reason.clone(),
            })?;
        }
        actions.push(format!("{}: {reason}", m.state().name()));
    }
    fsutil::clear_dir(&root.staging())?;
    for tmp in ["current.tmp", "previous.tmp"] {
        let p = root.dir.join(tmp);
        if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p).map_err(|e| UpdateError::io(&p, e))?;
        }
    }
    // `current` must resolve to a complete version (guards against hand edits and disk damage).
    let cur = root.link_version(CURRENT)?;
    let cur_ok = cur
        .as_deref()
        .is_some_and(|v| verify_installed(&root.version_dir(v), None, Check::Structure).is_ok());
    if !cur_ok {
        let installed = root.installed()?;
        let good = |v: &str| verify_installed(&root.version_dir(v), None, Check::Structure).is_ok();
        let prev = root
            .link_version(PREVIOUS)
            .ok()
            .flatten()
            .filter(|v| good(v));
        let newest = || {
            let mut by_time: Vec<(std::time::SystemTime, String)> = installed
                .iter()
                .filter(|v| good(v))
                .map(|v| (installed_at(&root.version_dir(v)), v.clone()))
                .collect();
            by_time.sort();
            by_time.pop().map(|(_, v)| v)
        };
        if let Some(v) = prev.or_else(newest) {
            root.point(CURRENT, Some(&v))?;
            crate::sys::fs::sync_dir(&root.dir).at(&root.dir)?;
            let what = match &cur {
                Some(c) => format!(
                    "current pointed at {c}, which is incomplete or missing; now points at {v}"
                ),
                None => format!("current was missing; now points at {v}"),
            };
            m.note(what.clone())?;
            actions.push(what);
        } else if cur.is_some() {
            actions.push(
                "current points at an incomplete version and no complete one is installed".into(),
            );
        }
    }
    Ok(RecoverReport {
        found: found.name().into(),
        actions,
        current: root.link_version(CURRENT)?,
    })
}

/// Back to `previous` (swapping the two), through the same checks as an install: the previous
/// version's files are re-verified against its signed manifest, smoke-tested, switched in, and
/// health-gated, with the same automatic rollback.
pub fn rollback(ctx: &InstallContext) -> Result<Outcome, UpdateError> {
    let root = Root::create(&ctx.config.models_dir)?;
    let _lock = fsutil::lock(&root.lock_file())?;
    let mut m = Machine::load(&root.dir, ctx.observer)?;
    recover_locked(&root, &mut m, !ctx.no_daemon, ctx.config)?;
    let from = root.link_version(CURRENT)?;
    let Some(target) = root.link_version(PREVIOUS)? else {
        return Err(UpdateError::NothingToRollBack {
            detail: format!("{} does not exist", root.link(PREVIOUS).display()),
        });
    };
    if from.as_deref() == Some(target.as_str()) {
        return Err(UpdateError::NothingToRollBack {
            detail: format!("previous and current are both {target}"),
        });
    }
    let keys = TrustedKeys::load(&ctx.config.trusted_keys)?;
    if !ctx.no_daemon {
        daemon::probe(&ctx.config.state_dir)?;
    }
    m.begin(Attempt {
        kind: AttemptKind::Rollback,
        archive: None,
        version: Some(target.clone()),
        bundle_hash: None,
        key_id: None,
        fresh: false,
        from: from.clone(),
        from_previous: Some(target.clone()),
        pid: std::process::id(),
        started_at: now(),
        gate: None,
        note: None,
    })?;
    let id = match verify_installed(&root.version_dir(&target), Some(&keys), Check::Full) {
        Ok(id) => id,
        Err(e) => return reject(&root, &mut m, None, e),
    };
    m.attempt_mut().bundle_hash = Some(id.hash.clone());
    m.transition_to(State::Unpacked)?;
    finish_from_unpacked(&root, &mut m, ctx, &target, &id.hash, &id.manifest.smoke)
}

/// One installed version, for `gemba model list`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub bundle_hash: Option<String>,
    pub model_type: Option<String>,
    pub files: usize,
    pub bytes: u64,
    pub installed_at: String,
    pub current: bool,
    pub previous: bool,
    /// `ok`, or what is wrong (with `--verify`: signature and every hash).
    pub check: String,
}

fn installed_at(dir: &Path) -> std::time::SystemTime {
    std::fs::metadata(dir.join(MANIFEST_NAME))
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// Installed versions, newest first. With `keys`, every file is re-hashed and the signature
/// re-checked.
pub fn list(
    cfg: &UpdateConfig,
    keys: Option<&TrustedKeys>,
) -> Result<Vec<VersionInfo>, UpdateError> {
    let root = Root::new(&cfg.models_dir);
    let cur = root.link_version(CURRENT)?;
    let prev = root.link_version(PREVIOUS)?;
    let mut out = Vec::new();
    for v in root.installed()? {
        let dir = root.version_dir(&v);
        let check = if keys.is_some() {
            Check::Full
        } else {
            Check::Structure
        };
        let (id, check) = match verify_installed(&dir, keys, check) {
            Ok(id) => (Some(id), "ok".to_string()),
            Err(e) => (identify(&dir).ok(), e.to_string()),
        };
        let t = installed_at(&dir);
        out.push((
            t,
            VersionInfo {
                version: v.clone(),
                bundle_hash: id.as_ref().map(|i| i.hash.clone()),
                model_type: id.as_ref().map(|i| i.model_type.clone()),
                files: id.as_ref().map(|i| i.manifest.files.len()).unwrap_or(0),
                bytes: id.as_ref().map(|i| i.manifest.total_bytes()).unwrap_or(0),
                installed_at: chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                current: cur.as_deref() == Some(v.as_str()),
                previous: prev.as_deref() == Some(v.as_str()),
                check,
            },
        ));
    }
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.version.cmp(&a.1.version)));
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// Removes all but the `keep` newest versions (never `current` or `previous`), caches of bundles
/// no longer installed, and staging leftovers. Returns what was removed.
pub fn gc(cfg: &UpdateConfig, keep: usize) -> Result<Vec<PathBuf>, UpdateError> {
    let root = Root::create(&cfg.models_dir)?;
    let _lock = fsutil::lock(&root.lock_file())?;
    let mut m = Machine::load(&root.dir, None)?;
    recover_locked(&root, &mut m, false, cfg)?;
    let versions = list(cfg, None)?;
    let mut removed = Vec::new();
    let mut kept_hashes = Vec::new();
    let mut kept = 0usize;
    for v in &versions {
        let pinned = v.current || v.previous;
        if pinned || kept < keep {
            if !pinned {
                kept += 1;
            }
            kept_hashes.extend(v.bundle_hash.clone());
            continue;
        }
        let dir = root.version_dir(&v.version);
        fsutil::remove_tree(&dir, &root.staging())?;
        log::info!("gc: removed {}", dir.display());
        removed.push(dir);
    }
    // Engine caches are named by bundle hash (64 hex digits); anything else under cache/ is not
    // ours to remove, and the listing never follows a link.
    for name in root
        .tree(layout::CACHE)?
        .subdirs()
        .map_err(|e| UpdateError::Layout {
            path: root.cache(),
            detail: e.to_string(),
        })?
    {
        let is_hash = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hash && !kept_hashes.contains(&name) {
            let p = root.cache().join(&name);
            fsutil::remove_tree(&p, &root.staging())?;
            removed.push(p);
        } else if !is_hash {
            log::info!(
                "gc: left {} alone (not an engine cache gemba made)",
                root.cache().join(&name).display()
            );
        }
    }
    fsutil::clear_dir(&root.staging())?;
    Ok(removed)
}

/// The layout's view for `gemba model status`.
pub fn links(cfg: &UpdateConfig) -> Result<(Option<String>, Option<String>), UpdateError> {
    let root = layout::Root::new(&cfg.models_dir);
    Ok((root.link_version(CURRENT)?, root.link_version(PREVIOUS)?))
}
