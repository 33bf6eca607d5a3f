//! The `[api]` section of the config, validated by the API that serves it: the listen address,
//! the token (from the config or a file; long enough, printable) and the exposure rule (a
//! non-loopback address needs a token) are checked here, once, where [`ApiSettings`] are made;
//! `--listen` goes through [`ApiSettings::listen_on`], which checks the rule again.
//!
//! In: the raw section `config.rs` parsed. Out: [`ApiSettings`], or `(key, message)` for
//! `config.rs` to attach the file to.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::config::{HumanDuration, HumanSize, KeyError, Ranges};

/// `api.max_image_pixels` unless set: 4096 × 4096, 48 MiB decoded.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 4096 * 4096;

/// The local HTTP API (see docs/api.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// `IP:PORT` to listen on (default 127.0.0.1:8470; port 0 picks a free one).
    pub listen: Option<String>,
    /// Bearer token every request must carry; required to listen on a non-loopback address.
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted (default 16MiB).
    pub max_body: Option<HumanSize>,
    /// API questions queued or answered at once; beyond it `POST /ask` answers 429 (default 4).
    pub max_asks: Option<usize>,
    /// Events buffered per live-stream client before its token events are dropped (default 256).
    pub sse_buffer: Option<usize>,
    /// Most pixels an uploaded image may have, checked from its header before it is decoded
    /// (default 16777216 = 4096², at most 100000000, the model processor's own limit).
    pub max_image_pixels: Option<u64>,
    /// Largest uploaded image or WAV file, in bytes once base64 is undone (default 8MiB).
    pub max_media_bytes: Option<HumanSize>,
    /// Open connections at once; further ones get 503 and are closed (default 256).
    pub max_connections: Option<usize>,
    /// Time a client has to send a request's headers, and that an idle connection stays open
    /// (default "10s").
    pub header_timeout: Option<HumanDuration>,
    /// Time a client has to send a request's body (default "60s").
    pub body_timeout: Option<HumanDuration>,
}

/// The local HTTP API's settings. Made only by [`validate`] (and changed only by
/// [`ApiSettings::listen_on`]), so the token and the exposure rule (a non-loopback address needs
/// a token) are checked once, where the settings are made.
#[derive(Debug, Clone, Serialize)]
pub struct ApiSettings {
    pub listen: std::net::SocketAddr,
    /// Never printed: `config check` shows whether one is set.
    #[serde(serialize_with = "redacted")]
    pub token: Option<String>,
    pub max_body: HumanSize,
    pub max_asks: usize,
    pub sse_buffer: usize,
    pub max_image_pixels: u64,
    pub max_media_bytes: HumanSize,
    pub max_connections: usize,
    pub header_timeout: HumanDuration,
    pub body_timeout: HumanDuration,
}

fn redacted<S: serde::Serializer>(t: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(_) => s.serialize_str("(set)"),
        None => s.serialize_none(),
    }
}

impl ApiSettings {
    /// Serves on `addr` instead (`gemba run --listen`), if the exposure rule allows it.
    pub fn listen_on(&mut self, addr: std::net::SocketAddr) -> Result<(), ApiError> {
        let old = std::mem::replace(&mut self.listen, addr);
        if let Err(e) = super::check_exposure(self) {
            self.listen = old;
            return Err(e);
        }
        Ok(())
    }
}

/// Validates `[api]`; `abs` resolves a relative `token_file` against the config's directory.
pub fn validate(raw: RawApi, abs: &dyn Fn(PathBuf) -> PathBuf) -> Result<ApiSettings, KeyError> {
    let bad = |key: &str, msg: String| -> KeyError { (key.to_string(), msg) };
    let listen_text = raw
        .listen
        .unwrap_or_else(|| super::DEFAULT_LISTEN.to_string());
    let listen = listen_text.parse().map_err(|_| {
        bad("api.listen", format!("\"{listen_text}\" is not an IP:PORT address (e.g. \"127.0.0.1:8470\", \"[::1]:8470\")"))
    })?;
    let token = match (raw.token, raw.token_file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "api.token_file",
                "set api.token or api.token_file, not both".into(),
            ))
        }
        (Some(t), None) => Some(t),
        (None, Some(f)) => {
            let f = abs(f);
            let text = std::fs::read_to_string(&f).map_err(|e| {
                bad(
                    "api.token_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        (None, None) => None,
    };
    if let Some(t) = &token {
        if let Err(why) = super::check_token(t) {
            return Err(bad("api.token", why));
        }
    }
    let range = Ranges { bad: &bad };
    let max_body = range.size(
        "api.max_body",
        raw.max_body.unwrap_or(HumanSize(16 << 20)),
        1 << 10,
        1 << 30,
    )?;
    let max_image_pixels = range.int(
        "api.max_image_pixels",
        raw.max_image_pixels.unwrap_or(DEFAULT_MAX_IMAGE_PIXELS),
        1,
        crate::media::vision::MAX_IMAGE_PIXELS as i64,
    )?;
    let max_media_bytes = range.size(
        "api.max_media_bytes",
        raw.max_media_bytes.unwrap_or(HumanSize(8 << 20)),
        1 << 10,
        1 << 30,
    )?;
    let max_connections = range.int(
        "api.max_connections",
        raw.max_connections.unwrap_or(256),
        1,
        65_536,
    )?;
    let timeout = |key: &str, v: Option<HumanDuration>, default: u64| {
        let d = v.unwrap_or(HumanDuration(Duration::from_secs(default)));
        range.duration(
            key,
            d,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )
    };
    let header_timeout = timeout("api.header_timeout", raw.header_timeout, 10)?;
    let body_timeout = timeout("api.body_timeout", raw.body_timeout, 60)?;
    let api = ApiSettings {
        listen,
        token,
        max_body,
        max_asks: range.int("api.max_asks", raw.max_asks.unwrap_or(4), 1, 256)?,
        sse_buffer: range.int("api.sse_buffer", raw.sse_buffer.unwrap_or(256), 4, 65_536)?,
        max_image_pixels,
        max_media_bytes,
        max_connections,
        header_timeout,
        body_timeout,
    };
    super::check_exposure(&api).map_err(|e| bad("api.listen", e.to_string()))?;
    Ok(api)
}
