//! The smoke test: load a bundle with the engine exactly as the daemon would (same providers,
//! TensorRT engines built into the bundle's cache directory) and check the manifest's prompt.
//!
//! On a board the load is where TensorRT builds its engines (minutes on first install), so it
//! shows a spinner with the elapsed time and logs the phase; the generation shows its token count.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::manifest::SmokeSpec;
use super::UpdateError;
use crate::model::providers::ProviderPolicy;
use crate::model::{runtime, CancelToken, Engine, Event};

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("static template"),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Loads the bundle at `dir` with `policy` (its TensorRT cache dir set to `cache_dir`) and runs
/// the smoke prompt. `version` names the bundle in errors.
pub fn smoke_test(
    onnxruntime: Option<&Path>,
    dir: &Path,
    version: &str,
    spec: &SmokeSpec,
    policy: &ProviderPolicy,
    cache_dir: &Path,
) -> Result<(), UpdateError> {
    let rt = runtime::init(onnxruntime).map_err(UpdateError::Runtime)?;
    let mut policy = policy.clone();
    policy.tensorrt.cache_dir = Some(cache_dir.to_path_buf());
    std::fs::create_dir_all(cache_dir).map_err(|e| UpdateError::io(cache_dir, e))?;
    log::info!(
        "smoke {version}: loading {} (TensorRT engines, if any, build into {})",
        dir.display(),
        cache_dir.display()
    );
    let pb = spinner(format!(
        "smoke {version}: loading sessions (TensorRT engines build into {})",
        cache_dir.display()
    ));
    let t0 = std::time::Instant::now();
    let loaded = Engine::load(rt, dir, &policy);
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut engine = match loaded {
        Ok(e) => e,
        Err(source) => {
            pb.finish_and_clear();
            return Err(UpdateError::SmokeLoad {
                version: version.into(),
                error: source,
            });
        }
    };
    for r in engine.provider_reports() {
        for (p, why) in &r.failures {
            log::warn!(
                "smoke {version}: {}: {p} did not register ({why}); fell back",
                r.component
            );
        }
    }
    pb.set_message(format!("smoke {version}: {:?}", spec.prompt));
    let t1 = std::time::Instant::now();
    let reply = run_smoke(&mut engine, spec, &mut |n| {
        pb.set_message(format!("smoke {version}: {n} tokens"))
    })
    .map_err(|detail| UpdateError::SmokeRun {
        version: version.into(),
        detail,
    });
    pb.finish_and_clear();
    let reply = reply?;
    let generate_ms = t1.elapsed().as_secs_f64() * 1e3;
    if !reply.contains(&spec.expect_contains) {
        return Err(UpdateError::SmokeFailed {
            version: version.into(),
            prompt: spec.prompt.clone(),
            expected: spec.expect_contains.clone(),
            reply,
        });
    }
    log::info!("smoke {version}: passed in {load_ms:.0} ms load + {generate_ms:.0} ms generation");
    Ok(())
}

/// Runs the smoke prompt on a loaded engine (greedy per the bundle's search defaults, at most
/// `max_tokens`, 5 minutes at most) and returns the reply; the daemon can call this after a
/// reload to fill `smoke_ok`.
pub fn run_smoke(
    engine: &mut Engine,
    spec: &SmokeSpec,
    on_token: &mut dyn FnMut(usize),
) -> Result<String, String> {
    let ids = engine
        .prompt_ids(&spec.prompt, spec.system.as_deref(), false)
        .map_err(|e| e.to_string())?;
    let mut params = engine.default_params();
    params.max_new_tokens = Some(spec.max_tokens);
    params.deadline = Some(Duration::from_secs(300));
    let mut n = 0usize;
    let done = engine
        .generate_ids(ids, &params, &CancelToken::new(), &mut |ev| {
            if let Event::Token(_) = ev {
                n += 1;
                on_token(n);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(done.text)
}
