//! `gemba model pack`: a bundle directory → a signed archive (`.tar` or `.tar.zst`).
//!
//! The manifest lists every regular file under the directory (sorted) with its size and sha256,
//! the genai model type read from genai_config.json (parsed strictly, so a bundle gemba cannot
//! load is not packed), the version, the minimum gemba version and the smoke test (flags, or
//! `gemba-smoke.json` in the directory). Links and special files in the directory are an error,
//! not silently skipped. Archive entries are written deterministically (mode 0644, uid/gid 0,
//! mtime 0), manifest first, signature second; the output appears atomically (temp + rename).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::fsutil::{sha256_file, walk};
use super::keys::SigningKey;
use super::manifest::{
    check_path, check_version, FileEntry, Manifest, SmokeSpec, FORMAT, MANIFEST_NAME,
    SIGNATURE_NAME, SMOKE_FILE,
};
use super::{IoAt, UpdateError};

#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    pub version: String,
    pub name: Option<String>,
    /// Default: this gemba's version.
    pub min_gemba: Option<String>,
    /// Default: `gemba-smoke.json` in the bundle directory.
    pub smoke: Option<SmokeSpec>,
    /// zstd level for `.tar.zst` (default 3).
    pub zstd_level: Option<i32>,
    /// Signed permission to install over a newer version (see [`Manifest::allow_downgrade`]).
    pub allow_downgrade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    /// From the output name: `.tar` or `.tar.zst` / `.tzst`.
    pub fn from_path(p: &Path) -> Option<Compression> {
        let s = p.to_string_lossy();
        if s.ends_with(".tar.zst") || s.ends_with(".tzst") {
            Some(Compression::Zstd)
        } else if s.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct PackSummary {
    pub out: PathBuf,
    pub version: String,
    pub bundle_hash: String,
    pub key_id: String,
    pub files: usize,
    pub bytes: u64,
    pub archive_bytes: u64,
}

/// Builds the manifest for `dir` (hashing every file).
pub fn build_manifest(dir: &Path, opts: &PackOptions) -> Result<Manifest, UpdateError> {
    let err = |detail: String| UpdateError::Pack {
        dir: dir.to_path_buf(),
        detail,
    };
    check_version(&opts.version).map_err(err)?;
    let cfg_path = dir.join("genai_config.json");
    let cfg =
        crate::model::genai_config::GenaiConfig::load(&cfg_path).map_err(|e| err(e.to_string()))?;
    let smoke = match &opts.smoke {
        Some(s) => s.clone(),
        None => {
            let p = dir.join(SMOKE_FILE);
            if !p.is_file() {
                return Err(err(format!(
                    "no smoke test: pass --smoke-prompt and --expect-contains, or write {}",
                    p.display()
                )));
            }
            let text = std::fs::read(&p).at(&p)?;
            serde_json::from_slice(&text).map_err(|e| err(format!("{}: {e}", p.display())))?
        }
    };
    let mut files = Vec::new();
    for crate::sys::fs::Entry {
        rel,
        path: abs,
        meta,
    } in walk(dir)?
    {
        if [MANIFEST_NAME, SIGNATURE_NAME, SMOKE_FILE].contains(&rel.as_str()) {
            continue;
        }
        if !meta.file_type().is_file() {
            return Err(err(format!(
                "{rel}: not a regular file (links and special files cannot be packed)"
            )));
        }
        check_path(&rel).map_err(|p| err(format!("{rel}: {p}")))?;
        let (sha256, size) = sha256_file(&abs)?;
        files.push(FileEntry {
            path: rel,
            size,
            sha256,
        });
    }
    let m = Manifest {
        format: FORMAT.into(),
        version: opts.version.clone(),
        name: opts.name.clone(),
        min_gemba: opts
            .min_gemba
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        model_type: cfg.model.model_type.clone(),
        smoke,
        files,
        allow_downgrade: opts.allow_downgrade,
    };
    m.validate().map_err(err)?;
    Ok(m)
}

/// The trusted comment signed with every manifest.
pub fn trusted_comment(m: &Manifest) -> String {
    format!(
        "timestamp:{} gemba bundle {} ({})",
        chrono::Utc::now().timestamp(),
        m.version,
        m.model_type
    )
}

/// Who signs the manifest.
pub enum Signer<'a> {
    /// A secret key on this machine.
    Key(&'a SigningKey),
    /// A detached minisign signature of the manifest made elsewhere (`minisign -Sm
    /// gemba-manifest.json` on an offline machine, over the bytes `--manifest-only` wrote; the
    /// manifest is deterministic, so packing again reproduces them). Checked against `trusted`
    /// when given.
    Detached {
        signature: String,
        trusted: Option<&'a super::keys::TrustedKeys>,
    },
}

/// Packs `dir` into `out`, signed with `key`.
pub fn pack(
    dir: &Path,
    key: &SigningKey,
    opts: &PackOptions,
    out: &Path,
) -> Result<PackSummary, UpdateError> {
    pack_signed(dir, Signer::Key(key), opts, out)
}

/// Writes only the manifest `pack` would sign (for signing elsewhere); returns its bundle hash.
pub fn write_manifest(dir: &Path, opts: &PackOptions, out: &Path) -> Result<String, UpdateError> {
    let bytes = build_manifest(dir, opts)?.to_bytes();
    std::fs::write(out, &bytes).at(out)?;
    Ok(super::manifest::bundle_hash(&bytes))
}

/// Packs `dir` into `out` with the manifest signed by `signer`.
pub fn pack_signed(
    dir: &Path,
    signer: Signer,
    opts: &PackOptions,
    out: &Path,
) -> Result<PackSummary, UpdateError> {
    let compression = Compression::from_path(out).ok_or_else(|| UpdateError::Pack {
        dir: dir.to_path_buf(),
        detail: format!("{}: the output must end in .tar or .tar.zst", out.display()),
    })?;
    let manifest = build_manifest(dir, opts)?;
    let bytes = manifest.to_bytes();
    let (sig, key_id) = match signer {
        Signer::Key(key) => (
            key.sign(&bytes, &trusted_comment(&manifest)),
            key.id.clone(),
        ),
        Signer::Detached { signature, trusted } => {
            let id = match trusted {
                Some(t) => t.verify(Path::new(MANIFEST_NAME), &bytes, &signature)?,
                None => minisign::SignatureBox::from_string(&signature)
                    .map(|b| super::keys::key_id(b.keynum()))
                    .map_err(|e| UpdateError::Pack {
                        dir: dir.to_path_buf(),
                        detail: format!("--signature: not a minisign signature: {e}"),
                    })?,
            };
            (signature, id)
        }
    };
    let mut entries: Vec<(String, EntrySource)> = vec![
        (MANIFEST_NAME.into(), EntrySource::Bytes(bytes.clone())),
        (SIGNATURE_NAME.into(), EntrySource::Bytes(sig.into_bytes())),
    ];
    for f in &manifest.files {
        entries.push((f.path.clone(), EntrySource::File(dir.join(&f.path))));
    }
    write_archive(out, compression, opts.zstd_level.unwrap_or(3), &entries)?;
    Ok(PackSummary {
        out: out.to_path_buf(),
        version: manifest.version.clone(),
        bundle_hash: super::manifest::bundle_hash(&bytes),
        key_id,
        files: manifest.files.len(),
        bytes: manifest.total_bytes(),
        archive_bytes: std::fs::metadata(out).at(out)?.len(),
    })
}

pub enum EntrySource {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Writes regular-file entries, in order, to `out` (temp + rename).
pub fn write_archive(
    out: &Path,
    compression: Compression,
    level: i32,
    entries: &[(String, EntrySource)],
) -> Result<(), UpdateError> {
    let tmp = {
        let mut s = out.as_os_str().to_owned();
        s.push(format!(".part.{}", std::process::id()));
        PathBuf::from(s)
    };
    let file = BufWriter::new(File::create(&tmp).at(&tmp)?);
    let result = (|| -> std::io::Result<()> {
        match compression {
            Compression::None => {
                let mut w = append_all(tar::Builder::new(file), entries)?;
                w.flush()?;
                w.into_inner().map_err(|e| e.into_error())?.sync_all()
            }
            Compression::Zstd => {
                let enc = zstd::Encoder::new(file, level)?;
                let enc = append_all(tar::Builder::new(enc), entries)?;
                let mut w = enc.finish()?;
                w.flush()?;
                w.into_inner().map_err(|e| e.into_error())?.sync_all()
            }
        }
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(UpdateError::io(out, e));
    }
    std::fs::rename(&tmp, out).at(out)
}

fn append_all<W: Write>(
    mut b: tar::Builder<W>,
    entries: &[(String, EntrySource)],
) -> std::io::Result<W> {
    b.mode(tar::HeaderMode::Deterministic);
    for (path, src) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match src {
            EntrySource::Bytes(bytes) => {
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, path, bytes.as_slice())?;
            }
            EntrySource::File(p) => {
                let f = File::open(p)?;
                h.set_size(f.metadata()?.len());
                b.append_data(&mut h, path, f)?;
            }
        }
    }
    b.into_inner()
}
