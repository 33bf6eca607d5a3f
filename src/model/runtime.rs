//! Finding and loading the ONNX Runtime shared library.
//!
//! gemba never downloads ONNX Runtime: it is loaded at run time (`ort`'s `load-dynamic`) from,
//! in order, the path given on the command line or in the config, `ORT_DYLIB_PATH`, the
//! project's own setup location (`scripts/setup` puts the PyPI wheel's library under `.ort/`),
//! an installed layout beside the binary, and the usual system places. The first candidate that
//! exists is loaded; an explicit path that does not exist is an error rather than a silent
//! fallback. A library older than the floor (`api-23` → 1.23) is refused with the version found.
//!
//! What flows out: a process-wide [`Runtime`] (the `ort::Environment` plus where it came from and
//! its version), created once; everything that builds sessions takes it by reference.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The oldest ONNX Runtime gemba accepts (the `api-23` feature of `ort`).
pub const MIN_ORT_MINOR: u32 = 23;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (tried: {tried}); run scripts/setup, or pass --onnxruntime PATH / set ORT_DYLIB_PATH / onnxruntime.library in the config"
    )]
    NotFound { tried: String },
    #[error("ONNX Runtime library {path} given by {source_name} does not exist; fix the path or run scripts/setup")]
    ExplicitMissing {
        path: PathBuf,
        source_name: &'static str,
    },
    #[error(
        "ONNX Runtime at {path} is version {version}, older than the 1.{MIN_ORT_MINOR} gemba needs; install onnxruntime >= 1.{MIN_ORT_MINOR} (scripts/setup) or point --onnxruntime at a newer library"
    )]
    TooOld { path: PathBuf, version: String },
    #[error("could not load ONNX Runtime from {path}: {reason}; is it a libonnxruntime shared library for this machine?")]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime from {path} loaded, but creating its environment failed: {reason}")]
    Environment { path: PathBuf, reason: String },
    #[error("ONNX Runtime was already loaded from {loaded}; cannot switch to {requested} in the same process")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
}

/// The loaded ONNX Runtime: one per process.
pub struct Runtime {
    pub env: ort::environment::Environment,
    pub path: PathBuf,
    pub version: String,
    /// How the library was found (`--onnxruntime`, `ORT_DYLIB_PATH`, `setup`, `system`).
    pub found_by: &'static str,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Where to look, in order. `explicit` is `--onnxruntime` / the config's `onnxruntime.library`.
pub fn candidates(explicit: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    let mut out: Vec<(PathBuf, &'static str)> = Vec::new();
    if let Some(p) = explicit {
        out.push((p.to_path_buf(), "--onnxruntime"));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|s| !s.is_empty()) {
        out.push((PathBuf::from(p), "ORT_DYLIB_PATH"));
    }
    // The project's own setup location: scripts/setup installs the PyPI wheel's library here.
    let mut setup_dirs: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("GEMBA_HOME") {
        setup_dirs.push(PathBuf::from(home).join(".ort/default"));
    }
    setup_dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/default"));
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            // Installed layout: /usr/local/bin/gemba + /usr/local/lib/gemba/libonnxruntime.so
            setup_dirs.push(dir.join("../lib/gemba"));
            // A dev build in target/{debug,release}/ of a checkout.
            setup_dirs.push(dir.join("../../.ort/default"));
        }
    }
    for d in setup_dirs {
        out.push((d.join("libonnxruntime.so"), "setup"));
    }
    for d in [
        "/usr/lib/gemba",
        "/usr/local/lib",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib",
        "/opt/onnxruntime/lib",
    ] {
        out.push((Path::new(d).join("libonnxruntime.so"), "system"));
    }
    out
}

/// Resolves `path` to a loadable file: the path itself, or, for a `libonnxruntime.so` that is
/// absent, the newest versioned `libonnxruntime.so.1.X.Y` beside it (the PyPI wheel ships only
/// the versioned name).
fn resolve(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let dir = path.parent()?;
    let name = path.file_name()?.to_str()?;
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}.")) && p.is_file())
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

/// Parses `1.23.2` → (1, 23).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut it = version.split('.');
    Some((
        it.next()?.trim().parse().ok()?,
        it.next()?.trim().parse().ok()?,
    ))
}

/// Reads the library's version without handing it to `ort`, so that a too-old library becomes a
/// clear error instead of a refusal deep inside the environment builder.
fn probe_version(path: &Path) -> Result<String, RuntimeError> {
    // SAFETY: loading a shared library runs its initialisers; we only do this for files that the
    // user or the setup pointed us at as ONNX Runtime.
    // SAFETY: loading runs the library's initialisers; `path` was resolved to an ONNX Runtime
    // shared library (the same file `ort` loads next), whose initialisers have no preconditions.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| RuntimeError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let getter: libloading::Symbol<unsafe extern "system" fn() -> *const ort::sys::OrtApiBase> =
        // SAFETY: OrtGetApiBase has exactly this signature in every ONNX Runtime release (C API).
        unsafe { lib.get(b"OrtGetApiBase") }.map_err(|_| RuntimeError::Load {
            path: path.to_path_buf(),
            reason: "it does not export OrtGetApiBase".into(),
        })?;
    // SAFETY: OrtGetApiBase takes no arguments and returns a pointer to a static table (checked
    // for null below); `lib` stays mapped (forgotten below).
    let base = unsafe { getter() };
    if base.is_null() {
        return Err(RuntimeError::Load {
            path: path.to_path_buf(),
            reason: "OrtGetApiBase returned null".into(),
        });
    }
    // SAFETY: `base` is non-null and points to the library's static OrtApiBase; its
    // GetVersionString returns a static NUL-terminated string.
    let cstr = unsafe { std::ffi::CStr::from_ptr(((*base).GetVersionString)()) };
    let version = cstr.to_string_lossy().into_owned();
    // Keep the library mapped: `ort` opens the same file next, and unloading ONNX Runtime is not
    // something it supports cleanly.
    std::mem::forget(lib);
    Ok(version)
}

/// Loads ONNX Runtime once per process and returns it. Later calls return the same runtime;
/// asking for a different explicit library after one is loaded is an error.
pub fn init(explicit: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
    if let Some(rt) = RUNTIME.get() {
        if let Some(p) = explicit {
            let requested = resolve(p).unwrap_or_else(|| p.to_path_buf());
            let same =
                std::fs::canonicalize(&requested).ok() == std::fs::canonicalize(&rt.path).ok();
            if !same {
                return Err(RuntimeError::AlreadyLoaded {
                    loaded: rt.path.clone(),
                    requested,
                });
            }
        }
        return Ok(rt);
    }
    let mut tried = Vec::new();
    for (candidate, found_by) in candidates(explicit) {
        let Some(path) = resolve(&candidate) else {
            if found_by == "--onnxruntime" || found_by == "ORT_DYLIB_PATH" {
                return Err(RuntimeError::ExplicitMissing {
                    path: candidate,
                    source_name: found_by,
                });
            }
            tried.push(candidate.display().to_string());
            continue;
        };
        let version = probe_version(&path)?;
        match major_minor(&version) {
            Some((1, minor)) if minor >= MIN_ORT_MINOR => {}
            _ => return Err(RuntimeError::TooOld { path, version }),
        }
        let builder = ort::init_from(&path).map_err(|e| RuntimeError::Load {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let env = builder
            .with_name("gemba")
            .with_telemetry(false)
            .build()
            .map_err(|e| RuntimeError::Environment {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        // ort creates the environment at ONNX Runtime's VERBOSE level (its `tracing` bridge
        // filters later), which makes ONNX Runtime format verbose messages inside kernels on every
        // run: ~14 µs a decode step on the tiny int4 bundle (MatMulNBits), a quarter of the step.
        // Ask ONNX Runtime only for what gemba's own log level will show.
        env.set_log_level(ort_log_level(log::max_level()));
        let rt = Runtime {
            env,
            path,
            version,
            found_by,
        };
        return Ok(RUNTIME.get_or_init(|| rt));
    }
    Err(RuntimeError::NotFound {
        tried: tried.join(", "),
    })
}

/// ONNX Runtime's log level for gemba's: verbose only at trace, info at -v/-vv, else warnings.
fn ort_log_level(gemba: log::LevelFilter) -> ort::logging::LogLevel {
    use ort::logging::LogLevel;
    match gemba {
        log::LevelFilter::Trace => LogLevel::Verbose,
        log::LevelFilter::Debug | log::LevelFilter::Info => LogLevel::Info,
        _ => LogLevel::Warning,
    }
}

/// The runtime, if something already loaded it.
pub fn get() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// Execution providers compiled into the loaded library (e.g. `CPUExecutionProvider`,
/// `CUDAExecutionProvider`). Compiled in is not the same as usable: CUDA may be listed on a
/// machine without a GPU.
pub fn available_providers() -> Vec<String> {
    use std::ffi::{c_char, CStr};
    let api = ort::api();
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut n: i32 = 0;
    // SAFETY: `list` and `n` are valid out-pointers for the call; ONNX Runtime fills them with
    // an array it owns (released below) and its length.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut n) };
    if !status.0.is_null() {
        // SAFETY: a non-null status from the call above, released exactly once.
        unsafe { (api.ReleaseStatus)(status.0) };
        return Vec::new();
    }
    let mut out = Vec::new();
    for i in 0..n.max(0) as isize {
        // SAFETY: 0 <= i < n, and `list` holds `n` pointers (the call succeeded).
        let p = unsafe { *list.offset(i) };
        if !p.is_null() {
            // SAFETY: each entry is a NUL-terminated provider name owned by `list`, still alive.
            out.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        }
    }
    // SAFETY: `list` and `n` are exactly what GetAvailableProviders returned, released once;
    // nothing borrowed from it outlives this line (the names were copied).
    let _ = unsafe { (api.ReleaseAvailableProviders)(list, n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_runtime_logs_verbosely_only_when_gemba_traces() {
        use ort::logging::LogLevel;
        assert_eq!(ort_log_level(log::LevelFilter::Off), LogLevel::Warning);
        assert_eq!(ort_log_level(log::LevelFilter::Error), LogLevel::Warning);
        assert_eq!(ort_log_level(log::LevelFilter::Warn), LogLevel::Warning);
        assert_eq!(ort_log_level(log::LevelFilter::Info), LogLevel::Info);
        assert_eq!(ort_log_level(log::LevelFilter::Debug), LogLevel::Info);
        assert_eq!(ort_log_level(log::LevelFilter::Trace), LogLevel::Verbose);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(major_minor("1.23.2"), Some((1, 23)));
        assert_eq!(major_minor("1.31.1"), Some((1, 31)));
        assert_eq!(major_minor("garbage"), None);
    }

    #[test]
    fn explicit_path_comes_first() {
        let c = candidates(Some(Path::new("/x/libonnxruntime.so")));
        assert_eq!(
            c[0],
            (PathBuf::from("/x/libonnxruntime.so"), "--onnxruntime")
        );
        assert!(c.iter().any(|(_, by)| *by == "system"));
    }

    #[test]
    fn resolve_finds_versioned_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.23.2"), b"x").unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), b"x").unwrap();
        let got = resolve(&dir.path().join("libonnxruntime.so")).unwrap();
        assert_eq!(got.file_name().unwrap(), "libonnxruntime.so.1.31.1");
        assert!(resolve(&dir.path().join("nothing.so")).is_none());
    }
}
