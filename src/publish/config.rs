//! `[mqtt]` in the config: the broker URL, who this board is, credentials and TLS files,
//! validated into [`MqttSettings`] (the config module calls [`validate`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::HumanDuration;

/// The file schema of `[mqtt]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// `mqtt://host:1883` or `mqtts://host:8883` (TLS).
    pub broker: Option<String>,
    /// This board's id in topics and the fleet table (default: the host name).
    pub board_id: Option<String>,
    /// The site (plant, line) the board belongs to (default `default`).
    pub site: Option<String>,
    /// MQTT client id (default: the board id).
    pub client_id: Option<String>,
    /// Topic prefix (default `gemba/<site>/<board_id>`).
    pub topic_prefix: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A file holding the password (first line), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) for `mqtts://` (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that authenticate clients by certificate.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// MQTT keep-alive (default 15s): how soon the broker notices a dead board and sends its
    /// last will (after 1.5 × this).
    pub keep_alive: Option<HumanDuration>,
    /// Publish the live sentences of answers in progress on `<prefix>/sentences` (default true).
    pub sentences: Option<bool>,
    /// Answer questions sent to `<prefix>/ask` (default true).
    pub ask: Option<bool>,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl BrokerUrl {
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883); IPv6 hosts in brackets.
    pub fn parse(s: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!(
                "\"{s}\" is not a broker URL; write mqtt://HOST:1883 or mqtts://HOST:8883"
            ));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "\"{s}\": only scheme, host and port go in the URL (credentials go in mqtt.username / mqtt.password)"
            ));
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| format!("\"{s}\": unclosed [ in the host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("\"{s}\" names no host"));
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("\"{s}\": \"{p}\" is not a port"))?,
        };
        Ok(BrokerUrl { tls, host, port })
    }
}

/// Validated `[mqtt]`.
#[derive(Debug, Clone, Serialize)]
pub struct MqttSettings {
    pub broker: BrokerUrl,
    pub board_id: String,
    pub site: String,
    pub client_id: String,
    pub topic_prefix: String,
    pub username: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub keep_alive: HumanDuration,
    pub sentences: bool,
    pub ask: bool,
}

fn redacted<S: serde::Serializer>(t: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(_) => s.serialize_str("(set)"),
        None => s.serialize_none(),
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or `gemba`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gemba".into())
}

/// A topic level: no `/`, `+`, `#`, control characters; 1–128 bytes.
pub fn check_level(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 128 {
        return Err(format!("{what} \"{v}\" must be 1–128 characters"));
    }
    if v.chars()
        .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(format!("{what} \"{v}\" must not contain '/', '+', '#' or control characters (it is a topic level)"));
    }
    Ok(())
}

/// `[mqtt]` → settings; errors name the key (`(key, message)`, as voice's validation does).
pub fn validate(
    raw: RawMqtt,
    abs: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Option<MqttSettings>, (String, String)> {
    let key = |k: &str| format!("mqtt.{k}");
    let Some(broker) = raw.broker else {
        let others = raw.board_id.is_some()
            || raw.username.is_some()
            || raw.topic_prefix.is_some()
            || raw.site.is_some();
        if others {
            return Err((
                key("broker"),
                "the [mqtt] section needs a broker (e.g. broker = \"mqtt://127.0.0.1:1883\")"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let broker = BrokerUrl::parse(&broker).map_err(|m| (key("broker"), m))?;
    let board_id = raw.board_id.unwrap_or_else(host_name);
    check_level("the board id", &board_id).map_err(|m| (key("board_id"), m))?;
    let site = raw.site.unwrap_or_else(|| "default".into());
    check_level("the site", &site).map_err(|m| (key("site"), m))?;
    let client_id = raw.client_id.unwrap_or_else(|| board_id.clone());
    if client_id.is_empty() || client_id.len() > 128 {
        return Err((key("client_id"), "must be 1–128 characters".into()));
    }
    let topic_prefix = raw
        .topic_prefix
        .unwrap_or_else(|| format!("gemba/{site}/{board_id}"));
    if topic_prefix.is_empty()
        || topic_prefix.starts_with('/')
        || topic_prefix.ends_with('/')
        || topic_prefix.contains(['+', '#'])
        || topic_prefix.split('/').any(str::is_empty)
    {
        return Err((
            key("topic_prefix"),
            format!("\"{topic_prefix}\" must be topic levels joined by '/', without wildcards"),
        ));
    }
    let password = match (raw.password, raw.password_file) {
        (Some(_), Some(_)) => {
            return Err((
                key("password_file"),
                "set mqtt.password or mqtt.password_file, not both".into(),
            ))
        }
        (Some(p), None) => Some(p),
        (None, Some(f)) => {
            let f = abs(f);
            let text = std::fs::read_to_string(&f).map_err(|e| {
                (
                    key("password_file"),
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            Some(text.lines().next().unwrap_or("").trim_end().to_string())
        }
        (None, None) => None,
    };
    if password.is_some() && raw.username.is_none() {
        return Err((key("username"), "a password needs a username".into()));
    }
    let file = |k: &str, p: Option<PathBuf>| -> Result<Option<PathBuf>, (String, String)> {
        match p.map(abs) {
            Some(p) if !p.is_file() => Err((
                key(k),
                format!("{} does not exist or is not a file", p.display()),
            )),
            p => Ok(p),
        }
    };
    let ca_file = file("ca_file", raw.ca_file)?;
    let client_cert = file("client_cert", raw.client_cert)?;
    let client_key = file("client_key", raw.client_key)?;
    if client_cert.is_some() != client_key.is_some() {
        return Err((
            key("client_key"),
            "a client certificate needs its key and the other way round (set both)".into(),
        ));
    }
    if !broker.tls && (ca_file.is_some() || client_cert.is_some()) {
        return Err((
            key("broker"),
            "TLS files are set but the broker URL is mqtt://; use mqtts://".into(),
        ));
    }
    let keep_alive = raw
        .keep_alive
        .unwrap_or(HumanDuration(Duration::from_secs(15)));
    if keep_alive.0 < Duration::from_secs(1) || keep_alive.0 > Duration::from_secs(65535) {
        return Err((key("keep_alive"), "must be between 1s and 18h".into()));
    }
    Ok(Some(MqttSettings {
        broker,
        board_id,
        site,
        client_id,
        topic_prefix,
        username: raw.username,
        password,
        ca_file,
        client_cert,
        client_key,
        keep_alive,
        sentences: raw.sentences.unwrap_or(true),
        ask: raw.ask.unwrap_or(true),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_or_say_what_is_wrong() {
        let ok = [
            ("mqtt://127.0.0.1:1883", false, "127.0.0.1", 1883),
            ("mqtt://broker", false, "broker", 1883),
            ("mqtts://broker.plant", true, "broker.plant", 8883),
            ("mqtts://[::1]:9999", true, "::1", 9999),
            ("mqtt://h:1884/", false, "h", 1884),
        ];
        for (s, tls, host, port) in ok {
            assert_eq!(
                BrokerUrl::parse(s).unwrap(),
                BrokerUrl {
                    tls,
                    host: host.into(),
                    port
                },
                "{s}"
            );
        }
        for (s, why) in [
            ("tcp://h:1883", "not a broker URL"),
            ("mqtt://", "names no host"),
            ("mqtt://h:0", "is not a port"),
            ("mqtt://h:x", "is not a port"),
            ("mqtt://u:p@h", "credentials go in"),
            ("mqtt://h/topic", "only scheme"),
        ] {
            let e = BrokerUrl::parse(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
        assert_eq!(
            BrokerUrl::parse("mqtts://[::1]:9999").unwrap().to_string(),
            "mqtts://[::1]:9999"
        );
    }

    fn raw(broker: &str) -> RawMqtt {
        RawMqtt {
            broker: Some(broker.into()),
            board_id: Some("b1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_the_board_id_and_site() {
        let s = validate(raw("mqtt://h"), &|p| p).unwrap().unwrap();
        assert_eq!(
            (
                s.client_id.as_str(),
                s.topic_prefix.as_str(),
                s.site.as_str()
            ),
            ("b1", "gemba/default/b1", "default")
        );
        let mut r = raw("mqtt://h");
        r.site = Some("plant-7".into());
        assert_eq!(
            validate(r, &|p| p).unwrap().unwrap().topic_prefix,
            "gemba/plant-7/b1"
        );
        assert!(validate(RawMqtt::default(), &|p| p).unwrap().is_none());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases: Vec<(RawMqtt, &str)> = vec![
            (
                RawMqtt {
                    board_id: Some("a/b".into()),
                    ..raw("mqtt://h")
                },
                "mqtt.board_id",
            ),
            (
                RawMqtt {
                    site: Some("#".into()),
                    ..raw("mqtt://h")
                },
                "mqtt.site",
            ),
            (
                RawMqtt {
                    topic_prefix: Some("a//b".into()),
                    ..raw("mqtt://h")
                },
                "mqtt.topic_prefix",
            ),
            (
                RawMqtt {
                    password: Some("p".into()),
                    ..raw("mqtt://h")
                },
                "mqtt.username",
            ),
            (
                RawMqtt {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..raw("mqtts://h")
                },
                "mqtt.ca_file",
            ),
            (
                RawMqtt {
                    board_id: Some("x".into()),
                    ..RawMqtt::default()
                },
                "mqtt.broker",
            ),
        ];
        for (r, key) in cases {
            let (k, msg) = validate(r, &|p| p).unwrap_err();
            assert_eq!(k, key, "{msg}");
        }
    }
}
