//! One alert look: every rule of a camera asked on the same frame, judged, and its state moved.
//!
//! In: the camera's frame (from a [`Class::Alert`](crate::daemon::queue::Class) request the
//! dispatcher hands over), the rules ([`Alerts::rules`]). Each rule's question goes to the model
//! worker as written, with the rule's constraint as the request's `response_format`; the frame
//! is the same for all of them, so the vision encoder's output is reused (the worker keeps the
//! features of the last image it encoded). Out: per rule, the persisted state, and for a raise or
//! a clear a report (`alert:NAME`: the frame, the answer) closed in the same transaction as the
//! state; then the event ([`Alerts::committed`]) and the MQTT message (`alerts` topic, through
//! the outbox).
//!
//! A rule whose answer cannot be judged (the run failed, the text is not JSON or not a choice)
//! leaves its state as it was; it is counted (`errors`) and logged once per rule and cause.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

use super::{AlertEvent, AlertRule, Alerts};
use crate::capture::Frame;
use crate::config::Settings;
use crate::daemon::worker::{
    AskInput, AskSettings, GenOverrides, Job, JobEvent, ModelInfo, Worker,
};
use crate::model::{CancelToken, Event};
use crate::report::{AlertMark, ReportMeta, ReportStats, Store, TextTimings, Trigger};

/// What a look needs from the daemon.
pub struct LookCtx<'a> {
    pub worker: &'a Worker,
    pub store: &'a Store,
    pub settings: &'a Mutex<Settings>,
    pub alerts: &'a Arc<Alerts>,
    pub info: &'a ModelInfo,
}

/// Causes already logged, per rule (a model that cannot give the shape would otherwise log
/// every look).
static LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn log_once(key: String, msg: String) {
    let mut l = LOGGED.lock().expect("poisoned");
    if l.get_or_insert_with(HashSet::new).insert(key) {
        log::warn!("{msg} (not logged again for this rule and cause)");
    }
}

fn ask_settings(s: &Settings, rule: &AlertRule) -> AskSettings {
    AskSettings {
        system_prompt: s.model.system_prompt.clone(),
        max_new_tokens: s.model.max_new_tokens,
        deadline: s.model.deadline.0,
        overrides: GenOverrides {
            // The decision must not depend on a draw.
            temperature: Some(0.0),
            response_format: Some(rule.format.clone()),
            ..Default::default()
        },
        speculate: s.model.speculate,
        prefix_cache: s.model.prefix_cache.map(|b| b.0 as usize),
        prefix_cache_ttl: s.model.prefix_cache_ttl.0,
    }
}

/// Asks one question on the frame; the answer's text and figures.
async fn ask(
    worker: &Worker,
    question: &str,
    frame: &Frame,
    settings: AskSettings,
    cancel: &CancelToken,
) -> Result<crate::model::Done, String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = Job::Ask {
        input: AskInput {
            text: question.to_string(),
            frames: vec![frame.clone()],
            audio: Vec::new(),
        },
        settings,
        cancel: cancel.clone(),
        events: tx,
    };
    let w = worker.clone();
    tokio::task::spawn_blocking(move || w.submit(job))
        .await
        .map_err(|e| e.to_string())??;
    let mut done = None;
    let mut failed = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            JobEvent::Event(Event::Done(d)) => done = Some(d),
            JobEvent::Event(_) => {}
            JobEvent::Failed(e) => failed = Some(e),
        }
    }
    match (done, failed) {
        (Some(d), _) => match d.stop {
            crate::model::StopReason::Cancelled | crate::model::StopReason::Deadline => {
                Err(format!("generation stopped: {:?}", d.stop))
            }
            _ => Ok(d),
        },
        (None, Some(e)) => Err(e),
        (None, None) => Err("the model worker went away".into()),
    }
}

/// Evaluates every rule of `frame.camera` on `frame`. Returns the events of the changes.
pub async fn run(ctx: &LookCtx<'_>, frame: &Frame, cancel: &CancelToken) -> Vec<AlertEvent> {
    let camera = frame.camera.clone();
    let rules = ctx.alerts.rules(&camera);
    ctx.alerts
        .looks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::new();
    for rule in rules {
        if cancel.is_cancelled() {
            break;
        }
        let settings = ask_settings(&ctx.settings.lock().expect("poisoned"), &rule);
        let done = match ask(ctx.worker, &rule.question, frame, settings, cancel).await {
            Ok(d) => d,
            Err(e) => {
                ctx.alerts.count_error();
                log_once(
                    format!("{camera}/{}/run", rule.name),
                    format!("alert {camera}/{}: the question failed: {e}", rule.name),
                );
                continue;
            }
        };
        let (matched, answer) = match rule.judge(&done.text) {
            Ok(j) => j,
            Err(e) => {
                ctx.alerts.count_error();
                log_once(
                    format!("{camera}/{}/judge", rule.name),
                    format!(
                        "alert {camera}/{}: cannot judge the answer {:?}: {e}",
                        rule.name, done.text
                    ),
                );
                continue;
            }
        };
        let now = super::now_ms();
        let Some(mut applied) = ctx.alerts.apply(&camera, &rule.name, matched, &answer, now) else {
            continue; // the rule went away in a reload
        };
        let kind = applied.change.and_then(|c| c.kind());
        let store = ctx.store.clone();
        let written = match kind {
            Some(kind) => {
                let mark = AlertMark {
                    camera: camera.clone(),
                    rule: rule.name.clone(),
                    kind: kind.into(),
                    severity: rule.severity.word().into(),
                    state: applied.row.state.clone(),
                    answer: answer.to_string(),
                };
                let meta = ReportMeta {
                    trigger: Trigger::Alert {
                        rule: rule.name.clone(),
                    },
                    prompt: Some(rule.question.clone()),
                    cameras: vec![camera.clone()],
                    bundle_id: ctx.info.bundle_id.clone(),
                    bundle_hash: ctx.info.bundle_hash.clone(),
                    providers: ctx
                        .info
                        .providers
                        .iter()
                        .map(|r| (r.component.clone(), r.actual().to_string()))
                        .collect(),
                };
                let (frame, row, text) = (frame.clone(), applied.row.clone(), done.text.clone());
                let at_end = std::time::Duration::from_secs_f64(done.total_ms.max(0.0) / 1000.0);
                let generated = done.generated_tokens;
                let stats = ReportStats {
                    prompt_tokens: done.prompt_tokens as u64,
                    generated_tokens: done.generated_tokens as u64,
                    time_to_first_token_ms: Some(done.time_to_first_token_ms),
                    time_to_first_sentence_ms: done.time_to_first_sentence_ms,
                    total_ms: Some(done.total_ms),
                    tokens_per_s: Some(done.decode_tokens_per_s),
                    voice: None,
                    dropped_regions: 0,
                };
                tokio::task::spawn_blocking(move || {
                    let mut w = store.begin(meta)?;
                    w.add_image(&frame)?;
                    w.add_text(
                        text.trim(),
                        TextTimings {
                            at: at_end,
                            token_span: Some((0, generated)),
                        },
                    )?;
                    w.finish_alert(stats, &mark, &row)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map(|id| Some(id.as_str().to_string()))
            }
            None => {
                let row = applied.row.clone();
                tokio::task::spawn_blocking(move || store.put_alert_state(&row))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map(|()| None)
            }
        };
        match written {
            Ok(report) => {
                if let Some(id) = report {
                    applied.row.report_id = Some(id);
                }
                if let Some(ev) = ctx.alerts.committed(&applied, answer, frame.seq) {
                    publish(ctx, &ev).await;
                    out.push(ev);
                }
            }
            Err(e) => {
                // Not persisted: the state stays as it was, and the next look tries again.
                ctx.alerts.count_error();
                log::error!(
                    "alert {camera}/{}: writing its state failed: {e}",
                    rule.name
                );
            }
        }
    }
    out
}

/// The MQTT message (through the outbox, when `[mqtt]` is set).
async fn publish(ctx: &LookCtx<'_>, ev: &AlertEvent) {
    let mqtt_board = {
        let s = ctx.settings.lock().expect("poisoned");
        s.mqtt.as_ref().map(|m| m.board_id.clone())
    };
    if let Some(board) = mqtt_board {
        let msg = crate::report::store::OutboxMessage {
            topic: "alerts".into(),
            payload: alert_payload(ev, &board).to_string(),
        };
        let store = ctx.store.clone();
        let report = ev
            .report_id
            .as_deref()
            .and_then(|r| crate::report::ReportId::parse(r).ok());
        let r = tokio::task::spawn_blocking(move || store.outbox_push(&msg, report.as_ref())).await;
        if !matches!(r, Ok(Ok(_))) {
            log::warn!(
                "alert {}/{}: queueing its MQTT message failed",
                ev.camera,
                ev.rule
            );
        }
    }
}

/// `<prefix>/alerts`: one per change of a rule's state (docs/mqtt.md).
pub fn alert_payload(ev: &AlertEvent, board: &str) -> Value {
    serde_json::json!({
        "format": crate::publish::payload::FORMAT,
        "id": format!("{board}/alerts/{}/{}/{}/{}", ev.camera, ev.rule, ev.at_ms, ev.to.word()),
        "board": board,
        "camera": ev.camera,
        "rule": ev.rule,
        "from": ev.from,
        "to": ev.to,
        "kind": ev.kind,
        "severity": ev.severity,
        "at": ev.at,
        "answer": ev.answer,
        "frame_seq": ev.frame_seq,
        "report_id": ev.report_id,
    })
}
