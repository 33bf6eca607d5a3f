//! `gemba doctor`: what this machine can run.
