//! `gemba fleet status`: the boards a broker knows, from their retained `status` messages
//! (`<root>/<site>/<board>/status`): online or not, gemba version, bundle, alerts raised, and
//! how long ago each made its last report.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use super::{BrokerUrl, PublishError};

/// `gemba fleet …`
#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// The boards seen on a broker (from their retained status messages), as a table.
    Status(FleetStatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct FleetStatusArgs {
    /// The broker: mqtt://HOST:1883 or mqtts://HOST:8883.
    #[arg(long, value_name = "URL")]
    pub broker: String,
    /// Only this site's boards (default: every site).
    #[arg(long, value_name = "SITE")]
    pub site: Option<String>,
    /// The first topic level of the boards' prefixes (`gemba/<site>/<board>` by default).
    #[arg(long, default_value = "gemba", value_name = "LEVEL")]
    pub root: String,
    #[arg(long, env = "GEMBA_MQTT_USERNAME")]
    pub username: Option<String>,
    #[arg(long, env = "GEMBA_MQTT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// How long to collect retained messages after subscribing.
    #[arg(long, default_value = "1s", value_parser = crate::sys::duration::parse, value_name = "DURATION")]
    pub wait: Duration,
    /// JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `gemba fleet …`; prints the table (or JSON).
pub fn run_fleet_command(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Status(a) => {
            let broker =
                BrokerUrl::parse(&a.broker).map_err(|m| anyhow::anyhow!("--broker: {m}"))?;
            if let Some(s) = &a.site {
                super::config::check_level("the site", s)
                    .map_err(|m| anyhow::anyhow!("--site: {m}"))?;
            }
            let creds = a
                .username
                .as_deref()
                .map(|u| (u, a.password.as_deref().unwrap_or("")));
            let rows = collect(&broker, &a.root, a.site.as_deref(), creds, a.wait)?;
            if a.json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", table(&rows));
            }
            Ok(())
        }
    }
}

/// One board's row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BoardRow {
    pub site: String,
    pub board: String,
    pub online: bool,
    pub version: String,
    pub bundle: String,
    pub alerts_raised: u64,
    /// Seconds since the board's last report, when it has made one.
    pub last_report_age_s: Option<f64>,
    pub outbox_pending: u64,
}

/// Reads the retained status messages under `<root>/<site or +>/+/status` for `wait` after the
/// subscription is acknowledged (retained messages come right after it).
pub fn collect(
    broker: &BrokerUrl,
    root: &str,
    site: Option<&str>,
    username: Option<(&str, &str)>,
    wait: Duration,
) -> Result<Vec<BoardRow>, PublishError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PublishError::Protocol(format!("starting a runtime: {e}")))?;
    rt.block_on(collect_async(broker, root, site, username, wait))
}

async fn collect_async(
    broker: &BrokerUrl,
    root: &str,
    site: Option<&str>,
    username: Option<(&str, &str)>,
    wait: Duration,
) -> Result<Vec<BoardRow>, PublishError> {
    let id = format!(
        "gemba-fleet-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_millisecond() % 100_000
    );
    let mut o = MqttOptions::new(id, broker.host.clone(), broker.port);
    o.set_clean_session(true);
    o.set_max_packet_size(16 << 20, 16 << 20);
    if let Some((u, p)) = username {
        o.set_credentials(u, p);
    }
    if broker.tls {
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::default()));
    }
    let (client, mut el) = AsyncClient::new(o, 16);
    let filter = format!("{root}/{}/+/status", site.unwrap_or("+"));
    let mut rows: BTreeMap<(String, String), BoardRow> = BTreeMap::new();
    let now = jiff::Timestamp::now();
    let mut until: Option<tokio::time::Instant> = None;
    let connect_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let deadline = until.unwrap_or(connect_deadline);
        let ev = match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) if until.is_some() => break,
            Err(_) => {
                return Err(PublishError::Connect {
                    broker: broker.to_string(),
                    msg: "no answer within 10 s".into(),
                })
            }
            Ok(Err(e)) => {
                return Err(PublishError::Connect {
                    broker: broker.to_string(),
                    msg: e.to_string(),
                })
            }
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                client
                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                    .map_err(|e| PublishError::Protocol(e.to_string()))?;
            }
            Event::Incoming(Packet::SubAck(_)) => until = Some(tokio::time::Instant::now() + wait),
            Event::Incoming(Packet::Publish(p)) => {
                let levels: Vec<&str> = p.topic.split('/').collect();
                let n = levels.len();
                if n < 3 {
                    continue;
                }
                let (site, board) = (levels[n - 3].to_string(), levels[n - 2].to_string());
                // An empty retained message clears a board (mosquitto_pub -r -n).
                if p.payload.is_empty() {
                    rows.remove(&(site, board));
                    continue;
                }
                if let Some(row) = row(&site, &board, &p.payload, now) {
                    rows.insert((site, board), row);
                }
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    Ok(rows.into_values().collect())
}

/// A status payload → a row (`offline` as a bare word, from other tools, is understood too).
pub fn row(site: &str, board: &str, payload: &[u8], now: jiff::Timestamp) -> Option<BoardRow> {
    let text = std::str::from_utf8(payload).ok()?;
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if text.trim() == "offline" => Value::Null,
        Err(_) => return None,
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let last_report_age_s = v
        .get("last_report_at")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| (now.as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0);
    let bundle = v.get("bundle").cloned().unwrap_or(Value::Null);
    let bundle = match (
        bundle.get("id").and_then(Value::as_str),
        bundle.get("version").and_then(Value::as_str),
    ) {
        (Some(id), Some(ver)) => format!("{id} {ver}"),
        (Some(id), None) => id.to_string(),
        _ => String::new(),
    };
    Some(BoardRow {
        site: site.to_string(),
        board: board.to_string(),
        online: v.get("online").and_then(Value::as_bool).unwrap_or(false),
        version: s("gemba_version"),
        bundle,
        alerts_raised: v.get("alerts_raised").and_then(Value::as_u64).unwrap_or(0),
        last_report_age_s,
        outbox_pending: v
            .pointer("/outbox/pending")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

fn age(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.0}h", s / 3600.0),
        Some(s) => format!("{:.0}d", s / 86_400.0),
    }
}

/// The table `gemba fleet status` prints.
pub fn table(rows: &[BoardRow]) -> String {
    let mut lines = vec![[
        "SITE".to_string(),
        "BOARD".into(),
        "STATE".into(),
        "VERSION".into(),
        "BUNDLE".into(),
        "ALERTS".into(),
        "LAST REPORT".into(),
        "OUTBOX".into(),
    ]];
    for r in rows {
        lines.push([
            r.site.clone(),
            r.board.clone(),
            if r.online { "online" } else { "offline" }.into(),
            r.version.clone(),
            r.bundle.clone(),
            r.alerts_raised.to_string(),
            age(r.last_report_age_s),
            r.outbox_pending.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no boards have a retained status on this broker)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_payloads_become_rows() {
        let now: jiff::Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        let p = br#"{"online":true,"gemba_version":"0.1.0","bundle":{"id":"demo","version":"3"},"alerts_raised":2,
                     "last_report_at":"2026-12-05T09:59:30.000Z","outbox":{"pending":5}}"#;
        let r = row("plant", "b1", p, now).unwrap();
        assert_eq!(
            (
                r.online,
                r.version.as_str(),
                r.bundle.as_str(),
                r.alerts_raised
            ),
            (true, "0.1.0", "demo 3", 2)
        );
        assert_eq!((r.last_report_age_s, r.outbox_pending), (Some(30.0), 5));
        let off = row("plant", "b2", b"offline", now).unwrap();
        assert!(!off.online && off.last_report_age_s.is_none());
        assert!(row("plant", "b3", b"{not json", now).is_none());
        let t = table(&[r, off]);
        assert!(
            t.lines().nth(1).unwrap().contains("b1") && t.contains("30s") && t.contains("offline"),
            "{t}"
        );
    }
}
