//! gemba: an edge daemon that puts an omni-modal model on the factory floor.
//!
//! The data path is the architecture: `Frame` / `AudioClip` → `Request` → tokens → `Sentence`
//! → report `Segment`. Each stage has one home:
//!
//! - [`capture`]: sources — cameras (V4L2, replay) publishing their latest `Frame`, microphones
//!   (cpal, WAV replay) sending `AudioClip`s; validates `[[cameras]]` and `[microphone]`.
//! - `monitor`: when to look — per camera an interval and a change gate → a routine-look
//!   `Request`.
//! - [`daemon`]: `gemba run`, `run(settings, shutdown)` — the `Request` types and their queue with
//!   classes (a person's question before alerts before routine looks), dispatch to the model
//!   worker (the thread that owns the sessions) and into the report, cameras opened before the
//!   model loads, `status.json`, start-up and shutdown order.
//! - [`alerts`]: rules per camera (a constrained question and a `when`), their states with
//!   hysteresis, persisted in the store; raises and clears are reports.
//! - [`media`]: what the model sees — JPEG/PNG/WAV decoding (one policy), vision and speech
//!   pre-processing, resize, tensors; no ONNX Runtime.
//! - [`model`]: bundles, ONNX Runtime sessions and providers, generation (tokens), the stream
//!   that turns tokens into `Sentence`s; depends on [`media`] only (tests/layering.rs).
//! - [`report`]: reports and their `Segment`s (text, frames, audio in order), the crash-safe
//!   store, retention, HTML pages and JSON export.
//! - [`api`]: the local HTTP API (status, ask with a live sentence stream, reports, metrics);
//!   validates `[api]`.
//! - [`voice`]: VAD → utterance → `Request`; speech out per `Sentence`.
//! - [`publish`]: leaving the board — MQTT (status, reports, live sentences, questions) through
//!   the store's outbox, and `gemba fleet status`.
//! - [`update`]: signed model bundles installed, health-checked and rolled back (`gemba model`).
//! - [`sys`]: infrastructure — atomic writes, the lock, hashing and walks (`sys::fs`), owned
//!   trees that sweeps never leave, the one duration type.
//! - [`config`]: the file and the board profile merged into `Settings`, each section validated
//!   by the module that owns it; [`doctor`]: what this machine can run; [`systemd`]: notify,
//!   watchdog, journal.
//!
//! The binary (`src/main.rs`) is thin glue: it parses the command line, calls into these modules,
//! prints, and picks the exit code. Modules that nothing outside the crate needs are
//! `pub(crate)`, so rustc reports what in them is unused.

pub mod alerts;
pub mod api;
pub mod bench;
pub mod bench_looks;
pub mod capture;
pub mod config;
pub mod conformance;
pub mod daemon;
pub mod doctor;
pub mod media;
pub mod model;
pub(crate) mod monitor;
pub mod publish;
pub mod report;
pub(crate) mod stage;
pub mod sys;
pub mod systemd;
pub mod update;
pub mod voice;
