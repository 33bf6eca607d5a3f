//! gemba: an edge daemon that puts an omni-modal model on the factory floor.
//!
//! The data path is the architecture: `Frame` / `AudioClip` → `Query` → tokens → `Sentence` →
//! `ReportSegment`. Each stage has one home:
//!
//! - [`capture`]: camera sources (V4L2, replay) publishing their latest frame, microphones
//!   (cpal, WAV replay) sending audio chunks.
//! - [`monitor`]: when to look — per camera an interval and a change gate → `Query`.
//! - [`media`]: pixels and samples the model sees — JPEG/PNG/WAV decoding (one policy), vision
//!   and speech pre-processing, resize, tensors; no ONNX Runtime.
//! - [`model`]: bundles, ONNX Runtime sessions and providers, generation, the token → sentence
//!   stream; depends on [`media`] only.
//! - [`daemon`]: `gemba run` — requests and their queue with classes, dispatch to the model
//!   worker (the thread that owns the sessions), cameras, `status.json`, start-up and shutdown.
//! - [`report`]: reports (frames, sentences, audio in order) and their crash-safe store,
//!   retention, HTML pages and JSON export.
//! - [`api`]: the local HTTP API (status, ask with a live sentence stream, reports, metrics).
//! - [`doctor`]: what this machine can run (runtime, providers, CPU and GPU facts).
//! - [`publish`]: leaving the board — MQTT (status, reports, live sentences, questions) through
//!   the store's outbox, and `gemba fleet status`.
//! - [`update`]: signed model bundles installed, health-checked and rolled back (`gemba model`).
//! - [`sys`]: owned directory trees that sweeps and gc can never leave (no link is followed).
//!
//! The binary (`src/main.rs`) is thin glue: it parses the command line, calls into these modules,
//! prints, and picks the exit code.

pub mod api;
pub mod bench;
pub mod capture;
pub mod config;
pub mod conformance;
pub mod daemon;
pub mod doctor;
pub mod media;
pub mod model;
pub mod monitor;
pub mod publish;
pub mod report;
pub mod stage;
pub mod sys;
pub mod systemd;
pub mod update;
pub mod voice;
