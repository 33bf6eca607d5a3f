//! `gemba model …`: the command-line face of the update module (parse, call, print).
//!
//! `main.rs` embeds [`ModelArgs`] as a subcommand and calls [`run`] with the config's
//! [`UpdateConfig`] (flags override it). Transitions are printed on stderr as they happen; the
//! result is one line on stdout (or JSON with `--json`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::fake_daemon::{self, FakeDaemonOptions};
use super::install::{self, InstallContext, Outcome};
use super::keys::{self, SigningKey, TrustedKeys};
use super::manifest::SmokeSpec;
use super::pack::{self, PackOptions};
use super::state::{Attempt, State};
use super::{daemon, inbox, UpdateConfig};
use crate::model::providers::ProviderPolicy;

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// The models root (versions/, current, previous, staging/, cache/) [config: update.models_dir].
    #[arg(long, global = true, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// A trusted minisign public key, or a directory of *.pub (repeatable) [config: update.trusted_keys].
    #[arg(long = "trusted-key", global = true, value_name = "PUB")]
    pub trusted_keys: Vec<PathBuf>,
    /// The daemon's state directory, where it writes status.json [config: update.state_dir].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Args, Debug)]
pub struct GateArgs {
    /// Install without telling the daemon and without the health gate.
    #[arg(long)]
    pub no_daemon: bool,
    /// How long the daemon has to report the new bundle ready (e.g. 60s, 5m) [config: update.health_timeout].
    #[arg(long, value_parser = crate::sys::duration::parse, value_name = "DURATION")]
    pub health_timeout: Option<Duration>,
    /// How long it must then stay ready before the update is kept [config: update.health_hold].
    #[arg(long, value_parser = crate::sys::duration::parse, value_name = "DURATION")]
    pub health_hold: Option<Duration>,
    /// Accept only bundles of this genai model type (repeatable) [config: update.accept_model_types].
    #[arg(long = "accept-model-type", value_name = "TYPE")]
    pub accept_model_types: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Make a signing key pair: PREFIX.key (secret, keep it off the boards) and PREFIX.pub.
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Pack a bundle directory into a signed archive (.tar or .tar.zst).
    Pack {
        dir: PathBuf,
        /// minisign secret key (password-protected keys read GEMBA_SIGNING_PASSWORD).
        #[arg(long, value_name = "KEYFILE", required_unless_present_any = ["signature", "manifest_only"])]
        key: Option<PathBuf>,
        /// Use this detached minisign signature of the manifest instead of --key (sign the file
        /// that --manifest-only wrote with `minisign -Sm`); checked against --trusted-key if given.
        #[arg(long, value_name = "MINISIG", conflicts_with = "key")]
        signature: Option<PathBuf>,
        /// Write only the manifest to --out (to sign it elsewhere).
        #[arg(long, conflicts_with_all = ["key", "signature"])]
        manifest_only: bool,
        #[arg(long, value_name = "V")]
        version: String,
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Oldest gemba that may install it (default: this gemba's version).
        #[arg(long, value_name = "SEMVER")]
        min_gemba: Option<String>,
        /// Smoke prompt (default: gemba-smoke.json in DIR).
        #[arg(long, requires = "expect_contains")]
        smoke_prompt: Option<String>,
        /// Text the smoke reply must contain.
        #[arg(long, requires = "smoke_prompt")]
        expect_contains: Option<String>,
        #[arg(long, requires = "smoke_prompt")]
        smoke_system: Option<String>,
        #[arg(long, default_value_t = 64)]
        smoke_max_tokens: usize,
        #[arg(long, value_name = "N")]
        zstd_level: Option<i32>,
        /// Allow this bundle to be installed over a newer version (a deliberate fleet rollback);
        /// signed with the manifest. Without it an older version is refused.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Verify an archive (signature, every file) without installing it.
    Verify { file: PathBuf },
    /// Install an archive: verify, unpack, smoke test, switch, reload the daemon, health gate, roll back on failure.
    Install {
        /// The archive (or use --inbox).
        #[arg(required_unless_present = "inbox", conflicts_with = "inbox")]
        file: Option<PathBuf>,
        /// Install every archive in this directory, then move each to ../done or ../failed (the path unit's mode).
        #[arg(long, value_name = "DIR")]
        inbox: Option<PathBuf>,
        #[arg(long, value_name = "DIR", requires = "inbox")]
        done: Option<PathBuf>,
        #[arg(long, value_name = "DIR", requires = "inbox")]
        failed: Option<PathBuf>,
        #[command(flatten)]
        gate: GateArgs,
    },
    /// Go back to the previous version (re-verified, smoke-tested and health-gated like an install).
    Rollback {
        #[command(flatten)]
        gate: GateArgs,
    },
    /// Finish an interrupted update and make sure `current` is a complete version (run at daemon start).
    Recover {
        #[arg(long)]
        json: bool,
    },
    /// Installed versions, newest first.
    List {
        /// Re-check every file's hash and the signature (needs --trusted-key).
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// The update state machine's record and the daemon's status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove old versions (never current or previous) and unused engine caches.
    Gc {
        /// Versions to keep besides current and previous [config: update.keep].
        #[arg(long)]
        keep: Option<usize>,
    },
    /// A stand-in daemon that honours the update contract (tests).
    #[command(hide = true)]
    FakeDaemon {
        #[arg(long)]
        fail_version: Vec<String>,
        #[arg(long)]
        crash_version: Vec<String>,
        #[arg(long)]
        degrade_version: Vec<String>,
        #[arg(long, value_parser = crate::sys::duration::parse, default_value = "0s")]
        degrade_after: Duration,
        #[arg(long)]
        ignore_reload: bool,
    },
}

fn print_transition(state: &State, attempt: Option<&Attempt>) {
    let v = attempt
        .and_then(|a| {
            a.version.clone().or_else(|| {
                a.archive
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    eprintln!("gemba model: {v}: {state}");
}

/// Runs a `gemba model` command; `base` is the config's update section.
pub fn run(
    args: ModelArgs,
    base: UpdateConfig,
    policy: ProviderPolicy,
    onnxruntime: Option<&Path>,
) -> Result<ExitCode> {
    let mut cfg = base;
    if let Some(m) = args.models {
        cfg.models_dir = m;
    }
    if !args.trusted_keys.is_empty() {
        cfg.trusted_keys = args.trusted_keys;
    }
    if let Some(s) = args.state_dir {
        cfg.state_dir = s;
    }
    match args.command {
        ModelCommand::Keygen { out, force } => {
            let (id, sk, pk) = keys::keygen(&out, force)?;
            println!(
                "key {id}: secret {} (keep it off the boards), public {}",
                sk.display(),
                pk.display()
            );
        }
        ModelCommand::Pack {
            dir,
            key,
            signature,
            manifest_only,
            version,
            out,
            name,
            min_gemba,
            smoke_prompt,
            expect_contains,
            smoke_system,
            smoke_max_tokens,
            zstd_level,
            allow_downgrade,
        } => {
            let smoke = smoke_prompt.map(|prompt| SmokeSpec {
                prompt,
                expect_contains: expect_contains.unwrap_or_default(),
                system: smoke_system,
                max_tokens: smoke_max_tokens,
            });
            let opts = PackOptions {
                version,
                name,
                min_gemba,
                smoke,
                zstd_level,
                allow_downgrade,
            };
            if manifest_only {
                let hash = pack::write_manifest(&dir, &opts, &out)?;
                println!("wrote {} (bundle {hash}); sign it with `minisign -Sm {}` and pack again with --signature", out.display(), out.display());
                return Ok(ExitCode::SUCCESS);
            }
            let trusted = if cfg.trusted_keys.is_empty() {
                None
            } else {
                Some(TrustedKeys::load(&cfg.trusted_keys)?)
            };
            let s = match (key, signature) {
                (Some(k), _) => pack::pack(&dir, &SigningKey::load(&k)?, &opts, &out)?,
                (None, Some(sig)) => {
                    let text = std::fs::read_to_string(&sig)
                        .with_context(|| format!("reading {}", sig.display()))?;
                    pack::pack_signed(
                        &dir,
                        pack::Signer::Detached {
                            signature: text,
                            trusted: trusted.as_ref(),
                        },
                        &opts,
                        &out,
                    )?
                }
                (None, None) => unreachable!("clap requires --key or --signature"),
            };
            println!(
                "packed {} → {}: bundle {} ({} files, {} bytes → {} bytes), signed by {}",
                dir.display(),
                s.out.display(),
                s.bundle_hash,
                s.files,
                s.bytes,
                s.archive_bytes,
                s.key_id
            );
        }
        ModelCommand::Verify { file } => {
            let keys = TrustedKeys::load(&cfg.trusted_keys)?;
            let pb = indicatif::ProgressBar::hidden();
            let v = super::unpack::verify_archive(&file, &keys, &mut |_| Ok(()), None, &pb)?;
            let m = &v.signed.manifest;
            println!(
                "{}: ok: bundle {} version {} ({}), {} files, {} bytes, signed by {}",
                file.display(),
                v.signed.bundle_hash,
                m.version,
                m.model_type,
                m.files.len(),
                m.total_bytes(),
                v.signed.key_id
            );
        }
        ModelCommand::Install {
            file,
            inbox: inbox_dir,
            done,
            failed,
            gate,
        } => {
            apply_gate(&mut cfg, &gate);
            let ctx = InstallContext {
                config: &cfg,
                policy: &policy,
                onnxruntime,
                no_daemon: gate.no_daemon,
                observer: Some(&print_transition),
            };
            if let Some(dir) = inbox_dir {
                let parent = dir
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                let done = done.unwrap_or_else(|| parent.join("done"));
                let failed = failed.unwrap_or_else(|| parent.join("failed"));
                let results = inbox::process(&dir, &done, &failed, &ctx)?;
                let bad = results.iter().filter(|r| !r.ok).count();
                if gate.json {
                    println!("{}", serde_json::to_string_pretty(&results)?);
                } else {
                    for r in &results {
                        match &r.reason {
                            None => println!(
                                "{}: installed ({}) → {}",
                                r.archive,
                                r.state,
                                r.moved_to.display()
                            ),
                            Some(why) => println!(
                                "{}: {} ({why}) → {}",
                                r.archive,
                                r.state,
                                r.moved_to.display()
                            ),
                        }
                    }
                }
                return Ok(if bad == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let file = file.expect("clap requires FILE without --inbox");
            let outcome = install::install(&file, &ctx)?;
            print_outcome(&outcome, gate.json)?;
        }
        ModelCommand::Rollback { gate } => {
            apply_gate(&mut cfg, &gate);
            let ctx = InstallContext {
                config: &cfg,
                policy: &policy,
                onnxruntime,
                no_daemon: gate.no_daemon,
                observer: Some(&print_transition),
            };
            let outcome = install::rollback(&ctx)?;
            print_outcome(&outcome, gate.json)?;
        }
        ModelCommand::Recover { json } => {
            let r = install::recover(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.actions.is_empty() {
                println!(
                    "nothing to recover (state {}); current: {}",
                    r.found,
                    r.current.as_deref().unwrap_or("none")
                );
            } else {
                for a in &r.actions {
                    println!("recovered: {a}");
                }
                println!("current: {}", r.current.as_deref().unwrap_or("none"));
            }
        }
        ModelCommand::List { verify, json } => {
            let keys = if verify {
                Some(TrustedKeys::load(&cfg.trusted_keys)?)
            } else {
                None
            };
            let versions = install::list(&cfg, keys.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else {
                for v in &versions {
                    let flag = if v.current {
                        "current "
                    } else if v.previous {
                        "previous"
                    } else {
                        "        "
                    };
                    println!(
                        "{flag} {:<16} {:<12} {:<8} {:>4} files {:>12} B  {}  {}",
                        v.version,
                        v.bundle_hash.as_deref().map(daemon::short).unwrap_or("-"),
                        v.model_type.as_deref().unwrap_or("-"),
                        v.files,
                        v.bytes,
                        v.installed_at,
                        v.check
                    );
                }
            }
            if versions.iter().any(|v| v.check != "ok") {
                return Ok(ExitCode::FAILURE);
            }
        }
        ModelCommand::Status { json } => {
            let record = super::read_record(&cfg.models_dir)?;
            let (current, previous) = install::links(&cfg)?;
            let d = daemon::read_status(&cfg.state_dir);
            if json {
                let v = serde_json::json!({
                    "models_dir": cfg.models_dir,
                    "current": current,
                    "previous": previous,
                    "update": record,
                    "daemon": match &d { Ok(s) => serde_json::to_value(s)?, Err(e) => serde_json::json!({"error": e}) },
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("models:   {}", cfg.models_dir.display());
                println!("current:  {}", current.as_deref().unwrap_or("none"));
                println!("previous: {}", previous.as_deref().unwrap_or("none"));
                println!("update:   {} (at {})", record.state, record.updated_at);
                if let Some(a) = &record.attempt {
                    println!(
                        "attempt:  {:?} {} from {} ({}){}{}",
                        a.kind,
                        a.version.as_deref().unwrap_or("?"),
                        a.from.as_deref().unwrap_or("none"),
                        a.archive
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        a.gate
                            .as_ref()
                            .map(|g| format!("; gate: {g}"))
                            .unwrap_or_default(),
                        a.note
                            .as_ref()
                            .map(|n| format!("; {n}"))
                            .unwrap_or_default(),
                    );
                }
                for h in record.history.iter().rev().take(8) {
                    println!(
                        "  {} {:<12} {}{}",
                        h.at,
                        h.state,
                        h.version.as_deref().unwrap_or(""),
                        h.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                }
                match d {
                    Ok(Some(s)) => {
                        println!(
                        "daemon:   pid {}{}, bundle {} ({}), ready {}, smoke_ok {:?}, error {:?}",
                        s.pid,
                        if daemon::is_gemba_alive(s.pid) { "" } else { " (not running)" },
                        s.bundle_id.as_deref().unwrap_or("-"),
                        s.bundle_hash.as_deref().map(daemon::short).unwrap_or("-"),
                        s.ready,
                        s.smoke_ok,
                        s.error
                    )
                    }
                    Ok(None) => println!(
                        "daemon:   no {}",
                        daemon::status_path(&cfg.state_dir).display()
                    ),
                    Err(e) => println!("daemon:   {e}"),
                }
            }
        }
        ModelCommand::Gc { keep } => {
            let removed = install::gc(&cfg, keep.unwrap_or(cfg.keep))?;
            for r in &removed {
                println!("removed {}", r.display());
            }
            println!("{} removed", removed.len());
        }
        ModelCommand::FakeDaemon {
            fail_version,
            crash_version,
            degrade_version,
            degrade_after,
            ignore_reload,
        } => {
            fake_daemon::run(&FakeDaemonOptions {
                models_dir: cfg.models_dir.clone(),
                state_dir: cfg.state_dir.clone(),
                onnxruntime: onnxruntime.map(Path::to_path_buf),
                fail_versions: fail_version,
                crash_versions: crash_version,
                degrade_versions: degrade_version,
                degrade_after,
                ignore_reload,
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn apply_gate(cfg: &mut UpdateConfig, g: &GateArgs) {
    if let Some(t) = g.health_timeout {
        cfg.health_timeout = t;
    }
    if let Some(h) = g.health_hold {
        cfg.health_hold = h;
    }
    if !g.accept_model_types.is_empty() {
        cfg.accept_model_types = g.accept_model_types.clone();
    }
}

fn print_outcome(o: &Outcome, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(o)?);
        return Ok(());
    }
    match o {
        Outcome::Installed {
            version,
            bundle_hash,
            gate,
        } => {
            println!(
                "{version} ({}) is active; health gate {gate}",
                daemon::short(bundle_hash)
            )
        }
        Outcome::AlreadyActive {
            version,
            bundle_hash,
        } => {
            println!(
                "{version} ({}) is already active; nothing changed",
                daemon::short(bundle_hash)
            )
        }
    }
    Ok(())
}
