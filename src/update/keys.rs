//! Signing keys and signatures, in minisign's format.
//!
//! Why minisign rather than raw ed25519 in a format of our own: the key and signature files are a
//! published, widely implemented format (minisign, rsign2, signify-style tooling, Go and JS
//! verifiers), so a fleet manager can sign on an offline machine with the stock `minisign -S`
//! and anyone can check a bundle's manifest with `minisign -V` without gemba. Signatures carry
//! the signer's key id, so several trusted keys (rotation, per-team keys) are matched by id and a
//! wrong key is reported as such; the trusted comment is signed too. Signatures are minisign's
//! pre-hashed (BLAKE2b) Ed25519; legacy (non-pre-hashed) signatures are refused.
//!
//! What flows in: `.key` / `.pub` files (or directories of `.pub` files); out: a
//! [`TrustedKeys`] set that verifies manifest bytes, and a [`SigningKey`] that signs them.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

use super::{IoAt, UpdateError};

/// Where a password-protected secret key's password is read from.
pub const PASSWORD_ENV: &str = "GEMBA_SIGNING_PASSWORD";

/// A minisign key id as minisign prints it (16 upper-case hex digits).
pub fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// Writes `PREFIX.key` (secret, mode 0600, not password-protected so that build machines can sign
/// unattended; use `minisign -G` for a password-protected key, `pack` reads both) and
/// `PREFIX.pub`. Returns the key id.
pub fn keygen(prefix: &Path, force: bool) -> Result<(String, PathBuf, PathBuf), UpdateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let sk_path = with_suffix(prefix, "key");
    let pk_path = with_suffix(prefix, "pub");
    for p in [&sk_path, &pk_path] {
        if p.exists() && !force {
            return Err(UpdateError::KeyExists { path: p.clone() });
        }
    }
    let kp = KeyPair::generate_unencrypted_keypair().map_err(|e| UpdateError::BadKey {
        path: sk_path.clone(),
        reason: e.to_string(),
    })?;
    let id = key_id(kp.pk.keynum());
    let sk_box = kp
        .sk
        .to_box(Some(&format!("gemba secret key {id}")))
        .map_err(|e| UpdateError::BadKey {
            path: sk_path.clone(),
            reason: e.to_string(),
        })?;
    let pk_box = kp.pk.to_box().map_err(|e| UpdateError::BadKey {
        path: pk_path.clone(),
        reason: e.to_string(),
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&sk_path)
        .at(&sk_path)?;
    f.write_all(sk_box.to_string().as_bytes())
        .and_then(|_| f.sync_all())
        .at(&sk_path)?;
    std::fs::write(&pk_path, pk_box.to_string()).at(&pk_path)?;
    Ok((id, sk_path, pk_path))
}

fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// A secret key ready to sign.
pub struct SigningKey {
    sk: SecretKey,
    pub id: String,
}

impl SigningKey {
    pub fn load(path: &Path) -> Result<SigningKey, UpdateError> {
        let text = std::fs::read_to_string(path).at(path)?;
        let bad = |reason: String| UpdateError::BadKey {
            path: path.to_path_buf(),
            reason,
        };
        let sk = match SecretKey::from_unencrypted_box(
            SecretKeyBox::from_string(&text).map_err(|e| bad(e.to_string()))?,
        ) {
            Ok(sk) => sk,
            Err(e) if e.to_string().contains("encrypted") => {
                let pw = std::env::var(PASSWORD_ENV).map_err(|_| UpdateError::EncryptedKey {
                    path: path.to_path_buf(),
                })?;
                SecretKey::from_box(
                    SecretKeyBox::from_string(&text).map_err(|e| bad(e.to_string()))?,
                    Some(pw),
                )
                .map_err(|e| bad(e.to_string()))?
            }
            Err(e) => {
                return Err(bad(format!(
                    "{e} (is this a minisign secret key, PREFIX.key?)"
                )))
            }
        };
        let id = key_id(sk.keynum());
        Ok(SigningKey { sk, id })
    }

    /// A minisign signature box (text) over `data`.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> String {
        minisign::sign(
            None,
            &self.sk,
            Cursor::new(data),
            Some(trusted_comment),
            Some(&format!("signature from gemba key {}", self.id)),
        )
        .expect("signing with a decrypted key cannot fail")
        .to_string()
    }
}

/// The public keys bundles may be signed with.
pub struct TrustedKeys {
    keys: Vec<(String, PublicKey, PathBuf)>,
}

impl TrustedKeys {
    /// Loads each path: a `.pub` file (minisign box, or the bare base64 line), or a directory whose
    /// `*.pub` files are all loaded. No key at all is an error: nothing is installed unverified.
    pub fn load(paths: &[PathBuf]) -> Result<TrustedKeys, UpdateError> {
        let mut keys = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                    .at(p)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "pub"))
                    .collect();
                files.sort();
                for f in files {
                    keys.push(load_public(&f)?);
                }
            } else {
                keys.push(load_public(p)?);
            }
        }
        if keys.is_empty() {
            return Err(UpdateError::NoTrustedKey);
        }
        Ok(TrustedKeys { keys })
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _, _)| id.clone()).collect()
    }

    /// Verifies a signature box over `data`; returns the signer's key id. `archive` names the
    /// source in errors.
    pub fn verify(
        &self,
        archive: &Path,
        data: &[u8],
        signature: &str,
    ) -> Result<String, UpdateError> {
        let sig = SignatureBox::from_string(signature).map_err(|e| UpdateError::BadSignature {
            archive: archive.to_path_buf(),
            key_id: "?".into(),
            detail: format!("gemba-manifest.json.minisig is not a minisign signature: {e}"),
        })?;
        let id = key_id(sig.keynum());
        let Some((_, pk, _)) = self.keys.iter().find(|(k, _, _)| *k == id) else {
            let trusted = self
                .keys
                .iter()
                .map(|(id, _, p)| format!("{id} from {}", p.display()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(UpdateError::UntrustedKey {
                archive: archive.to_path_buf(),
                key_id: id,
                trusted,
            });
        };
        minisign::verify(pk, &sig, Cursor::new(data), true, false, false).map_err(|e| {
            UpdateError::BadSignature {
                archive: archive.to_path_buf(),
                key_id: id.clone(),
                detail: e.to_string(),
            }
        })?;
        Ok(id)
    }
}

fn load_public(path: &Path) -> Result<(String, PublicKey, PathBuf), UpdateError> {
    let text = std::fs::read_to_string(path).at(path)?;
    let trimmed = text.trim();
    let pk = if trimmed.starts_with("untrusted comment:") {
        PublicKeyBox::from_string(trimmed).and_then(PublicKey::from_box)
    } else {
        PublicKey::from_base64(trimmed)
    }
    .map_err(|e| UpdateError::BadKey {
        path: path.to_path_buf(),
        reason: format!("{e} (is this a minisign public key, PREFIX.pub?)"),
    })?;
    Ok((key_id(pk.keynum()), pk, path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_wrong_key_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let (id_a, ska, pka) = keygen(&dir.path().join("a"), false).unwrap();
        let (_id_b, skb, _pkb) = keygen(&dir.path().join("b"), false).unwrap();
        assert!(matches!(
            keygen(&dir.path().join("a"), false),
            Err(UpdateError::KeyExists { .. })
        ));
        let trusted = TrustedKeys::load(&[pka]).unwrap();
        assert_eq!(trusted.ids(), vec![id_a.clone()]);
        let a = SigningKey::load(&ska).unwrap();
        let sig = a.sign(b"manifest", "gemba bundle 1");
        assert!(sig.contains("trusted comment: gemba bundle 1"));
        let arch = Path::new("x.tar");
        assert_eq!(trusted.verify(arch, b"manifest", &sig).unwrap(), id_a);
        let e = trusted.verify(arch, b"manifesT", &sig).unwrap_err();
        assert!(matches!(e, UpdateError::BadSignature { .. }), "{e}");
        let b = SigningKey::load(&skb).unwrap();
        let e = trusted
            .verify(arch, b"manifest", &b.sign(b"manifest", "x"))
            .unwrap_err();
        assert!(
            e.to_string().contains("wrong key") && e.to_string().contains(&b.id),
            "{e}"
        );
        let e = trusted.verify(arch, b"manifest", "hello").unwrap_err();
        assert!(e.to_string().contains("not a minisign signature"), "{e}");
        // Secret key as a public key, and no key at all.
        assert!(matches!(
            TrustedKeys::load(&[ska]),
            Err(UpdateError::BadKey { .. })
        ));
        assert!(matches!(
            TrustedKeys::load(&[]),
            Err(UpdateError::NoTrustedKey)
        ));
        // A directory of .pub files.
        assert_eq!(
            TrustedKeys::load(&[dir.path().to_path_buf()])
                .unwrap()
                .ids()
                .len(),
            2
        );
    }
}
