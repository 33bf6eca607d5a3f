//! Leaving the board: MQTT with the store's outbox (docs/mqtt.md).
//!
//! What flows in: closed reports (their message is written to the store's outbox in the
//! transaction that closes them: [`install_outbox`]), the daemon's events broadcast (live
//! sentences), the update record (`update-state.json` transitions), questions on
//! `<prefix>/ask`. What flows out: MQTT messages under `<prefix>` (`gemba/<site>/<board>` by
//! default): `status` (retained; the last will says `offline`), `reports`, `sentences`,
//! `update`, `answers/<id>`; and the publisher's state for `/status` and `/metrics`
//! ([`state`]).
//!
//! Delivery: everything but live sentences goes through the outbox and is published QoS 1 in
//! outbox order on one connection (so order is kept per topic); a row leaves the outbox when
//! the broker's PUBACK for it arrives. A broken connection, a broker outage or a daemon restart
//! resends every row not yet acknowledged: delivery is at least once, and every payload carries
//! an `id` for de-duplication. Live sentences are QoS 0 and dropped while disconnected (the
//! report's message has them all). The outbox is bounded by the store's retention: a report
//! evicted before its message left drops the message (counted in `dropped`).
//!
//! Connection: one rumqttc connection at a time, rebuilt from scratch after any failure (rumqttc's
//! own in-memory resend queue is never relied upon: the outbox is the only queue), with
//! exponential backoff from 0.5 s to 60 s; each failure's cause is logged once and kept in the
//! state (`last_error`), e.g. the broker refusing the user name and password.

pub mod config;
pub mod fleet;
mod mqtt;
pub mod payload;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

pub use config::{BrokerUrl, MqttSettings, RawMqtt};

use crate::daemon::AppHandle;
use crate::report::store::OutboxMessage;
use crate::report::Store;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("mqtt: reading {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("mqtt: the report store's outbox: {0}")]
    Outbox(#[from] crate::report::ReportError),
    #[error("mqtt: cannot reach the broker {broker}: {msg}")]
    Connect { broker: String, msg: String },
    #[error("mqtt: {0}")]
    Protocol(String),
}

/// What the publisher is doing, shared with `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct PublishState {
    pub broker: String,
    pub prefix: String,
    pub connected: AtomicBool,
    /// Connections made / attempts that failed.
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Outbox messages the broker acknowledged.
    pub delivered: AtomicU64,
    /// Live sentences published (QoS 0).
    pub sentences: AtomicU64,
    /// Outbox figures, refreshed several times a second.
    pub pending: AtomicU64,
    pub oldest_pending_ms: AtomicU64,
    pub dropped: AtomicU64,
    /// Questions taken on `<prefix>/ask` / refused as malformed.
    pub asks: AtomicU64,
    pub ask_errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl PublishState {
    pub fn to_json(&self) -> Value {
        json!({
            "broker": self.broker,
            "topic_prefix": self.prefix,
            "connected": self.connected.load(Ordering::Relaxed),
            "connects": self.connects.load(Ordering::Relaxed),
            "connect_failures": self.connect_failures.load(Ordering::Relaxed),
            "delivered": self.delivered.load(Ordering::Relaxed),
            "sentences": self.sentences.load(Ordering::Relaxed),
            "outbox": {
                "pending": self.pending.load(Ordering::Relaxed),
                "oldest_pending_ms": self.oldest_pending_ms.load(Ordering::Relaxed),
                "dropped": self.dropped.load(Ordering::Relaxed),
            },
            "asks": self.asks.load(Ordering::Relaxed),
            "ask_errors": self.ask_errors.load(Ordering::Relaxed),
            "last_error": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

static STATE: OnceLock<Arc<PublishState>> = OnceLock::new();

/// The publisher's state in this process, when `[mqtt]` is configured.
pub fn state() -> Option<Arc<PublishState>> {
    STATE.get().cloned()
}

/// `/status`'s `mqtt` member: the state, or `null` without `[mqtt]`.
pub fn status_json() -> Value {
    state().map_or(Value::Null, |s| s.to_json())
}

/// Turns on the store's outbox: each report that closes from now on queues its `reports`
/// message in the closing transaction. Call right after the store is opened.
pub fn install_outbox(store: &Store, s: &MqttSettings) -> Result<(), PublishError> {
    let board = s.board_id.clone();
    store.set_outbox_hook(Arc::new(move |r| {
        vec![OutboxMessage {
            topic: "reports".into(),
            payload: payload::report(r, &board).to_string(),
        }]
    }))?;
    Ok(())
}

/// The running publisher.
pub struct Publisher {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Stops: what the outbox still holds stays for the next start; the status turns
    /// `offline` (a clean disconnect sends no last will, so it is published).
    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            log::warn!("mqtt: the publisher did not stop within 5 s");
        }
    }
}

/// Starts the publisher (TLS files are read here, so a missing one is a start-up error).
pub fn start(s: &MqttSettings, app: AppHandle) -> Result<Publisher, PublishError> {
    let tls = mqtt::tls(s)?;
    let st = Arc::new(PublishState {
        broker: s.broker.to_string(),
        prefix: s.topic_prefix.clone(),
        ..Default::default()
    });
    let st = Arc::clone(STATE.get_or_init(|| st));
    let stop = tokio_util::sync::CancellationToken::new();
    let ctx = mqtt::Ctx {
        settings: s.clone(),
        tls,
        app,
        state: st,
    };
    // A supervised stage: a publisher that panics stops the daemon naming it (src/stage.rs).
    let task = tokio::spawn(crate::stage::run_until_stop(
        "mqtt",
        mqtt::run(ctx, stop.clone()),
    ));
    log::info!("mqtt: publishing to {} under {}", s.broker, s.topic_prefix);
    Ok(Publisher { stop, task })
}
