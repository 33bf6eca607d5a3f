//! Pixels and samples the model sees: decoding (JPEG with libjpeg 9's arithmetic, PNG, WAV),
//! the phi4mm vision and speech pre-processing, resampling, host tensors and `.npz` files.
//!
//! Nothing here runs ONNX Runtime or knows a session: the layer below [`crate::model`], which
//! feeds what this module produces to its sessions. `media` imports no other gemba layer (the
//! `tests/layering.rs` test reads the `use crate::` paths and fails otherwise), so capture, the
//! API and the command line can all decode and pre-process with the exact code the model's
//! conformance tests check.
//!
//! - [`jpeg`]: the one JPEG decoder for every path whose pixels reach the model (CLI, API,
//!   replay and V4L2 MJPEG cameras), matching ORT-GenAI's processor bit for bit.
//! - [`vision`] ([`resample`]) and [`speech`]: images and clips → the processor's batches.
//! - [`processor`]: a prompt with images and clips → the sessions' named [`tensor`]s; built by
//!   `model` from a bundle's already-parsed config and tokenizer.
//! - [`npz`]: those tensors written for inspection (`gemba preprocess`) and read back by tests.
//!
//! In: encoded bytes, files, decoded RGB8 frames, PCM. Out: plain Rust buffers; no channels.

pub mod jpeg;
pub mod npz;
pub mod processor;
pub mod resample;
pub mod speech;
pub mod tensor;
pub mod vision;
