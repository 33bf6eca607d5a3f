//! The connection loop: connect (with backoff), birth message, subscribe to `ask`, then drain the
//! outbox in order with a bounded window of unacknowledged messages, mapping each PUBACK back to
//! its outbox row. Also: live sentences (QoS 0), questions over MQTT, update transitions.
//!
//! rumqttc's event loop runs in its own task and hands its events over an unbounded channel
//! (bounded in practice by the window and the broker), so this loop never holds the event loop
//! while it does store work, and `poll` is never cancelled half way.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::payload::{self, BoardFacts};
use super::{MqttSettings, PublishError, PublishState};
use crate::daemon::{AppHandle, Request, RequestEvent};
use crate::model::Event as ModelEvent;
use crate::report::store::OutboxMessage;
use crate::report::Trigger;

/// Outbox messages sent and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// How often the outbox is looked at for new rows (and acknowledgements written back).
const TICK: Duration = Duration::from_millis(200);
/// The retained status is refreshed this often, and at most this often after reports.
const STATUS_EVERY: Duration = Duration::from_secs(30);
const STATUS_MIN_GAP: Duration = Duration::from_secs(3);
/// Longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest question taken over MQTT, in characters (as `POST /ask`).
const MAX_ASK_TEXT: usize = crate::api::ask::MAX_TEXT;

pub(super) struct Ctx {
    pub settings: MqttSettings,
    pub tls: Option<TlsConfiguration>,
    pub app: AppHandle,
    pub state: Arc<PublishState>,
}

/// TLS from the config's files (read now: a missing file is a start-up error).
pub(super) fn tls(s: &MqttSettings) -> Result<Option<TlsConfiguration>, PublishError> {
    if !s.broker.tls {
        return Ok(None);
    }
    let read = |what: &'static str, p: &std::path::Path| {
        std::fs::read(p).map_err(|source| PublishError::ReadFile {
            what,
            path: p.to_path_buf(),
            source,
        })
    };
    let client_auth = match (&s.client_cert, &s.client_key) {
        (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
        _ => None,
    };
    Ok(Some(match &s.ca_file {
        Some(ca) => TlsConfiguration::Simple { ca: read("CA file", ca)?, alpn: None, client_auth },
        None if client_auth.is_some() => {
            return Err(PublishError::Protocol(
                "a client certificate needs mqtt.ca_file too (the CA that signed the broker's certificate)".into(),
            ))
        }
        None => TlsConfiguration::default(),
    }))
}

impl Ctx {
    fn topic(&self, rel: &str) -> String {
        format!("{}/{rel}", self.settings.topic_prefix)
    }

    fn options(&self, will: &Value) -> MqttOptions {
        let s = &self.settings;
        let mut o = MqttOptions::new(s.client_id.clone(), s.broker.host.clone(), s.broker.port);
        o.set_keep_alive(s.keep_alive.0);
        o.set_clean_session(true);
        o.set_max_packet_size(16 << 20, 16 << 20);
        o.set_last_will(LastWill::new(
            self.topic("status"),
            will.to_string(),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(u) = &s.username {
            o.set_credentials(u.clone(), s.password.clone().unwrap_or_default());
        }
        if let Some(t) = &self.tls {
            o.set_transport(Transport::Tls(t.clone()));
        }
        o
    }

    async fn facts(&self) -> BoardFacts {
        let app = &self.app;
        let info = app.worker.info();
        let cameras: Vec<Value> = app
            .cameras
            .lock()
            .expect("poisoned")
            .iter()
            .map(|c| {
                let st = c.stats.snapshot();
                let state = if st.frames == 0 {
                    "waiting"
                } else if st.fps > 0.0 {
                    "ok"
                } else {
                    "stalled"
                };
                json!({ "name": c.name, "state": state, "fps": st.fps })
            })
            .collect();
        let store = app.store.clone();
        let (last, outbox) = tokio::task::spawn_blocking(move || {
            let last = store
                .list(&crate::report::ListFilter {
                    limit: Some(1),
                    ..Default::default()
                })
                .ok()
                .and_then(|l| l.first().map(|r| format!("{:.3}", r.created_at)));
            (last, store.outbox_stats().unwrap_or_default())
        })
        .await
        .unwrap_or_default();
        let version = std::fs::read(info.bundle_dir.join(crate::update::manifest::MANIFEST_NAME))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("version").and_then(Value::as_str).map(String::from));
        let loaded = app.worker.is_loaded();
        BoardFacts {
            board_id: self.settings.board_id.clone(),
            site: self.settings.site.clone(),
            bundle_id: info.bundle_id.clone(),
            bundle_hash: info.bundle_hash.clone(),
            bundle_version: version,
            providers: info
                .providers
                .iter()
                .map(|r| (r.component.clone(), r.actual().to_string()))
                .collect(),
            cameras,
            health: json!({
                "ready": loaded && !app.shutdown.is_cancelled(),
                "model": if loaded { "loaded" } else { "unloaded" },
                "last_error": info.last_error,
            }),
            reports: app.stats.reports.load(Ordering::Relaxed),
            last_report_at: last,
            outbox_pending: outbox.pending,
            outbox_dropped: outbox.dropped,
            alerts_raised: app.alerts.raised(),
        }
    }

    fn set_error(&self, msg: Option<String>) {
        *self
            .state
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = msg;
    }

    async fn refresh_outbox_stats(&self) {
        let store = self.app.store.clone();
        if let Ok(Ok(s)) = tokio::task::spawn_blocking(move || store.outbox_stats()).await {
            self.state.pending.store(s.pending, Ordering::Relaxed);
            self.state
                .oldest_pending_ms
                .store(s.oldest_age_ms, Ordering::Relaxed);
            self.state.dropped.store(s.dropped, Ordering::Relaxed);
        }
    }

    /// Queues a message that belongs to no report (answers, update transitions).
    async fn queue(&self, topic: String, payload: Value) {
        let store = self.app.store.clone();
        let msg = OutboxMessage {
            topic,
            payload: payload.to_string(),
        };
        match tokio::task::spawn_blocking(move || store.outbox_push(&msg, None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::error!("mqtt: queueing a message: {e}"),
            Err(e) => log::error!("mqtt: queueing task: {e}"),
        }
    }
}

/// A readable cause for a failed connection.
fn describe(e: &rumqttc::ConnectionError, s: &MqttSettings) -> String {
    use rumqttc::ConnectReturnCode as C;
    match e {
        // Mosquitto 2 answers a wrong password with "not authorized" (5), others with 4.
        rumqttc::ConnectionError::ConnectionRefused(code @ (C::BadUserNamePassword | C::NotAuthorized)) => match &s.username {
            Some(u) => format!(
                "the broker refused the user name or password of user \"{u}\" ({code:?}); check mqtt.username and mqtt.password"
            ),
            None => format!(
                "the broker refused this client ({code:?}): it needs credentials (mqtt.username / mqtt.password) or a client certificate"
            ),
        },
        rumqttc::ConnectionError::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
        rumqttc::ConnectionError::NetworkTimeout => "no answer within 5 s".into(),
        other => other.to_string(),
    }
}

/// Connects, serves a session, and reconnects with backoff until `stop`.
pub(super) async fn run(ctx: Ctx, stop: CancellationToken) {
    let ctx = Arc::new(ctx);
    tokio::spawn(watch_updates(Arc::clone(&ctx), stop.clone()));
    // The outbox's figures stay current while disconnected too (backoff sleeps up to 30 s).
    {
        let (ctx, stop) = (Arc::clone(&ctx), stop.clone());
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! { _ = stop.cancelled() => return, _ = t.tick() => {} }
                ctx.refresh_outbox_stats().await;
            }
        });
    }
    let mut backoff = Duration::from_millis(500);
    let mut logged: Option<String> = None;
    loop {
        ctx.refresh_outbox_stats().await;
        if stop.is_cancelled() {
            return;
        }
        let facts = ctx.facts().await;
        let will = payload::status(&facts, false, jiff::Timestamp::now());
        let (client, mut el) = AsyncClient::new(ctx.options(&will), 4 * WINDOW);
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            r = el.poll() => r,
        };
        match first {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {}
            other => {
                let msg = match other {
                    Err(e) => describe(&e, &ctx.settings),
                    Ok(ev) => format!("unexpected first packet {ev:?}"),
                };
                let msg = format!(
                    "cannot connect to {}: {msg}; retrying in {:.1} s",
                    ctx.settings.broker,
                    backoff.as_secs_f64()
                );
                ctx.state.connect_failures.fetch_add(1, Ordering::Relaxed);
                // Once per cause, not per attempt.
                let cause = msg
                    .split("; retrying")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                if logged.as_deref() != Some(cause.as_str()) {
                    log::warn!("mqtt: {msg} (logged once until the cause changes)");
                    eprintln!("gemba: mqtt: {msg}");
                    logged = Some(cause);
                }
                ctx.set_error(Some(msg));
                // Jitter keeps a fleet that lost its broker together from coming back in step.
                let jitter = Duration::from_millis(u64::from(std::process::id() % 250));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        backoff = Duration::from_millis(500);
        logged = None;
        ctx.set_error(None);
        ctx.state.connects.fetch_add(1, Ordering::Relaxed);
        ctx.state.connected.store(true, Ordering::Relaxed);
        log::info!(
            "mqtt: connected to {} as {}",
            ctx.settings.broker,
            ctx.settings.client_id
        );
        let (etx, erx) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                let r = el.poll().await;
                let end = r.is_err();
                if etx.send(r).is_err() || end {
                    return;
                }
            }
        });
        let result = Session::new(&ctx, client).serve(erx, &stop).await;
        poller.abort();
        ctx.state.connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(e) => {
                log::warn!(
                    "mqtt: connection to {} lost: {e}; reconnecting",
                    ctx.settings.broker
                );
                ctx.set_error(Some(format!("connection lost: {e}")));
            }
        }
    }
}

/// One connection's bookkeeping.
struct Session<'a> {
    ctx: &'a Arc<Ctx>,
    client: AsyncClient,
    /// One slot per publish request, in order: the outbox row it carries, if any.
    sent: VecDeque<Option<i64>>,
    by_pkid: HashMap<u16, i64>,
    outstanding: BTreeSet<i64>,
    last_sent: i64,
    acked: Vec<i64>,
    last_status: Instant,
    reports_since_status: bool,
}

impl<'a> Session<'a> {
    fn new(ctx: &'a Arc<Ctx>, client: AsyncClient) -> Session<'a> {
        Session {
            ctx,
            client,
            sent: VecDeque::new(),
            by_pkid: HashMap::new(),
            outstanding: BTreeSet::new(),
            last_sent: 0,
            acked: Vec::new(),
            last_status: Instant::now(),
            reports_since_status: false,
        }
    }

    fn publish(
        &mut self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: String,
        row: Option<i64>,
    ) -> bool {
        match self
            .client
            .try_publish(topic, qos, retain, payload.into_bytes())
        {
            Ok(()) => {
                self.sent.push_back(row);
                true
            }
            Err(_) => false,
        }
    }

    async fn publish_status(&mut self, online: bool) {
        let facts = self.ctx.facts().await;
        let p = payload::status(&facts, online, jiff::Timestamp::now());
        let topic = self.ctx.topic("status");
        self.publish(topic, QoS::AtLeastOnce, true, p.to_string(), None);
        self.last_status = Instant::now();
        self.reports_since_status = false;
    }

    async fn flush_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.acked);
        let n = seqs.len() as u64;
        let store = self.ctx.app.store.clone();
        match tokio::task::spawn_blocking(move || store.outbox_ack(&seqs)).await {
            Ok(Ok(())) => {
                self.ctx.state.delivered.fetch_add(n, Ordering::Relaxed);
            }
            // Not removed: sent again later (at least once).
            Ok(Err(e)) => log::error!("mqtt: removing acknowledged messages from the outbox: {e}"),
            Err(e) => log::error!("mqtt: outbox task: {e}"),
        }
    }

    /// Sends outbox rows after the last one sent, up to the window.
    async fn fill_window(&mut self) -> Result<(), String> {
        let room = WINDOW.saturating_sub(self.outstanding.len());
        if room == 0 {
            return Ok(());
        }
        let store = self.ctx.app.store.clone();
        let after = self.last_sent;
        let rows = tokio::task::spawn_blocking(move || store.outbox_peek(after, room))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for r in rows {
            let topic = self.ctx.topic(&r.topic);
            if r.topic == "reports" {
                self.reports_since_status = true;
            }
            if !self.publish(topic, QoS::AtLeastOnce, false, r.payload, Some(r.seq)) {
                break;
            }
            self.outstanding.insert(r.seq);
            self.last_sent = r.seq;
        }
        Ok(())
    }

    async fn serve(
        mut self,
        mut events: mpsc::UnboundedReceiver<Result<Event, rumqttc::ConnectionError>>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let ctx = Arc::clone(self.ctx);
        self.publish_status(true).await;
        let ask_topic = ctx.topic("ask");
        if ctx.settings.ask {
            self.client
                .try_subscribe(ask_topic.clone(), QoS::AtLeastOnce)
                .map_err(|e| e.to_string())?;
        }
        let mut live = ctx.app.events.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    self.flush_acks().await;
                    // The last reports' messages (closed while the daemon drained) go out now if
                    // the broker takes them within a moment; else they wait for the next start.
                    let _ = self.fill_window().await;
                    let deadline = tokio::time::sleep(Duration::from_secs(2));
                    tokio::pin!(deadline);
                    while !self.outstanding.is_empty() {
                        tokio::select! {
                            _ = &mut deadline => break,
                            ev = events.recv() => match ev {
                                Some(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                                    if let Some(seq) = self.by_pkid.remove(&a.pkid) {
                                        self.outstanding.remove(&seq);
                                        self.acked.push(seq);
                                    }
                                }
                                Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                                    if let Some(Some(seq)) = self.sent.pop_front() { self.by_pkid.insert(pkid, seq); }
                                }
                                None | Some(Err(_)) => break,
                                _ => {}
                            }
                        }
                    }
                    self.flush_acks().await;
                    // A clean disconnect sends no last will: say offline, then disconnect.
                    self.publish_status(false).await;
                    let _ = self.client.try_disconnect();
                    let written = tokio::time::sleep(Duration::from_secs(1));
                    tokio::pin!(written);
                    loop {
                        tokio::select! {
                            _ = &mut written => break,
                            ev = events.recv() => match ev {
                                Some(Ok(Event::Outgoing(Outgoing::Disconnect))) | None | Some(Err(_)) => break,
                                _ => {}
                            }
                        }
                    }
                    return Ok(());
                }
                ev = events.recv() => match ev {
                    None => { self.flush_acks().await; return Err("the MQTT event loop ended".into()) }
                    Some(Err(e)) => { self.flush_acks().await; return Err(describe(&e, &ctx.settings)) }
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(Some(seq)) = self.sent.pop_front() {
                            self.by_pkid.insert(pkid, seq);
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                        if let Some(seq) = self.by_pkid.remove(&a.pkid) {
                            self.outstanding.remove(&seq);
                            self.acked.push(seq);
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == ask_topic => {
                        tokio::spawn(on_ask(Arc::clone(&ctx), p.payload.to_vec()));
                    }
                    Some(Ok(Event::Incoming(Packet::SubAck(s)))) => {
                        if s.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            let msg = format!("the broker refused the subscription to {ask_topic} (questions over MQTT are off)");
                            log::warn!("mqtt: {msg}");
                            ctx.set_error(Some(msg));
                        }
                    }
                    Some(Ok(_)) => {}
                },
                _ = tick.tick() => {
                    self.flush_acks().await;
                    self.fill_window().await?;
                    let due = self.last_status.elapsed() >= STATUS_EVERY
                        || (self.reports_since_status && self.last_status.elapsed() >= STATUS_MIN_GAP);
                    if due {
                        self.publish_status(true).await;
                    }
                }
                ev = live.recv(), if ctx.settings.sentences => match ev {
                    Ok(crate::daemon::LiveEvent { report_id, cameras, event: ModelEvent::Sentence(s) }) => {
                        let p = payload::sentence(&report_id, &s, &cameras, &ctx.settings.board_id);
                        if self.publish(ctx.topic("sentences"), QoS::AtMostOnce, false, p.to_string(), None) {
                            ctx.state.sentences.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                },
            }
        }
    }
}

/// What `<prefix>/ask` takes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AskMessage {
    /// Correlation id: the answer goes to `<prefix>/answers/<id>`.
    id: String,
    /// The question.
    text: String,
    /// Cameras whose latest frame goes with the question.
    #[serde(default)]
    cameras: Vec<String>,
}

/// The correlation id of a payload, if one can be read (for the error reply).
fn correlation_id(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let id = v.get("id")?.as_str()?.to_string();
    super::config::check_level("id", &id).ok()?;
    Some(id)
}

/// A question over MQTT: validated, queued like an API question (trigger `api`), answered on
/// `answers/<id>` through the outbox. Malformed questions get an error reply there (or on
/// `answers/invalid` when no usable id can be read), never a crash.
async fn on_ask(ctx: Arc<Ctx>, payload: Vec<u8>) {
    ctx.state.asks.fetch_add(1, Ordering::Relaxed);
    let reply_to = |id: Option<&str>| format!("answers/{}", id.unwrap_or("invalid"));
    let fail = |id: Option<String>, msg: String| {
        let ctx = Arc::clone(&ctx);
        async move {
            ctx.state.ask_errors.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "mqtt: question {}: refused: {msg}",
                id.as_deref().unwrap_or("(no id)")
            );
            let body = json!({ "format": payload::FORMAT, "id": id, "ok": false, "error": msg });
            ctx.queue(reply_to(id.as_deref()), body).await;
        }
    };
    let q: AskMessage = match serde_json::from_slice(&payload) {
        Ok(q) => q,
        Err(e) => {
            let what = if std::str::from_utf8(&payload).is_err() {
                "not UTF-8".to_string()
            } else {
                format!("not a question: {e}")
            };
            return fail(
                correlation_id(&payload),
                format!("{what} (send {{\"id\": \"ID\", \"text\": \"QUESTION\", \"cameras\": [\"NAME\"]}})"),
            )
            .await;
        }
    };
    if let Err(e) = super::config::check_level("id", &q.id) {
        return fail(None, e).await;
    }
    let chars = q.text.chars().count();
    if q.text.trim().is_empty() || chars > MAX_ASK_TEXT {
        return fail(
            Some(q.id),
            format!("text: {chars} characters; send 1 to {MAX_ASK_TEXT}"),
        )
        .await;
    }
    let app = &ctx.app;
    if !app.worker.is_loaded() {
        return fail(Some(q.id), crate::daemon::worker::NOT_LOADED.into()).await;
    }
    let mut frames = Vec::new();
    for name in &q.cameras {
        if frames
            .iter()
            .any(|f: &crate::capture::Frame| &f.camera == name)
        {
            continue;
        }
        match app.latest_frame(name) {
            Some(f) => frames.push(f),
            None => {
                let known: Vec<String> = app
                    .cameras
                    .lock()
                    .expect("poisoned")
                    .iter()
                    .map(|c| c.name.clone())
                    .collect();
                let msg = if known.contains(name) {
                    format!("camera {name} has no frame yet")
                } else {
                    format!(
                        "cameras: no camera named {name:?} (cameras: {})",
                        known.join(", ")
                    )
                };
                return fail(Some(q.id), msg).await;
            }
        }
    }
    let (ltx, mut lrx) = mpsc::unbounded_channel();
    let mut r = Request::new(Trigger::Api, q.text);
    r.reason = format!("MQTT ask {}", q.id);
    r.frames = frames;
    r.listener = Some(ltx);
    if app.try_submit(r).is_err() {
        return fail(
            Some(q.id),
            "the model's request queue is full; ask again later".into(),
        )
        .await;
    }
    let mut report_id = None;
    let mut sentences = Vec::new();
    let mut result = None;
    while let Some(ev) = lrx.recv().await {
        match ev {
            RequestEvent::Started { report_id: id } => report_id = Some(id),
            // Citation markers out, as in the report.
            RequestEvent::Event(ModelEvent::Sentence(s)) => {
                sentences.push(crate::report::cite::cite(&s.text, &[] as &[&str]).text)
            }
            RequestEvent::Event(_) => {}
            RequestEvent::Closed {
                report_id: id,
                complete,
                error,
            } => {
                if !id.is_empty() {
                    report_id = Some(id);
                }
                result = Some((complete, error));
                break;
            }
        }
    }
    let (complete, error) = result.unwrap_or((
        false,
        Some("the daemon stopped before the question was answered".into()),
    ));
    sentences.retain(|s| !s.is_empty());
    let answer = sentences.join(" ");
    let body = json!({
        "format": payload::FORMAT,
        "id": q.id,
        "ok": error.is_none(),
        "complete": complete,
        "error": error,
        "report_id": report_id,
        "api_path": report_id.as_ref().map(|r| format!("/reports/{r}")),
        "answer": answer,
        "sentences": sentences,
    });
    ctx.queue(reply_to(Some(&q.id)), body).await;
}

/// Update transitions: new entries of `update-state.json` (the `[update]` models directory, or
/// the one holding the model's `current` link) become `update` messages.
async fn watch_updates(ctx: Arc<Ctx>, stop: CancellationToken) {
    let roots = {
        let s = ctx.app.settings.lock().expect("poisoned");
        vec![
            s.update.models_dir.clone(),
            s.model.path.parent().map(Into::into).unwrap_or_default(),
        ]
    };
    // Read leniently (only `history`), as GET /status does: a record this version does not fully
    // know still has its transitions published.
    let read = move || -> Vec<crate::update::state::HistoryEntry> {
        roots
            .iter()
            .map(|r| r.join("update-state.json"))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|mut v| v.get_mut("history").map(Value::take))
            .and_then(|h| serde_json::from_value(h).ok())
            .unwrap_or_default()
    };
    // Transitions from before this start were either published by the previous run or are old news.
    let mut seen: Option<String> = read().last().map(|h| h.at.clone());
    let mut t = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! { _ = stop.cancelled() => return, _ = t.tick() => {} }
        let read = read.clone();
        let Ok(history) = tokio::task::spawn_blocking(read).await else {
            continue;
        };
        let new: Vec<_> = history
            .into_iter()
            .filter(|h| seen.as_ref().is_none_or(|s| &h.at > s))
            .collect();
        for h in new {
            let body = json!({
                "format": payload::FORMAT,
                "id": format!("{}/update/{}/{}", ctx.settings.board_id, h.at, h.state),
                "board": ctx.settings.board_id,
                "at": h.at,
                "state": h.state,
                "version": h.version,
                "reason": h.reason,
            });
            ctx.queue("update".into(), body).await;
            seen = Some(h.at);
        }
    }
}
