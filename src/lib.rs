//! gemba: an edge daemon that puts an omni-modal model on the factory floor.
//!
//! The data path is the architecture: `Frame` / `AudioClip` → `Query` → tokens → `Sentence` →
//! `ReportSegment`. Each stage has one home:
//!
//! - [`model`]: bundles, ONNX Runtime sessions and providers, pre-processing, generation, the
//!   token → sentence stream, the worker thread that owns the sessions.
//! - [`doctor`]: what this machine can run (runtime, providers, CPU and GPU facts).
//! - [`update`]: signed model bundles installed, health-checked and rolled back (`gemba model`).
//!
//! The binary (`src/main.rs`) is thin glue: it parses the command line, calls into these modules,
//! prints, and picks the exit code.

pub mod bench;
pub mod capture;
pub mod conformance;
pub mod doctor;
pub mod model;
pub mod update;
