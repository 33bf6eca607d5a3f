//! The daemon's joins between stages. Today: [`queue`], the one queue of requests waiting for
//! the model, with classes (a person's question before alerts before routine looks); [`prompt`],
//! a queued question borrowed as the Engine's own input type. The rest of
//! the daemon (start-up, dispatch, status) is still in [`crate::app`].

pub mod prompt;
pub mod queue;
