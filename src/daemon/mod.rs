//! The daemon's joins between stages. Today: [`queue`], the one queue of requests waiting for
//! the model, with classes (a person's question before alerts before routine looks). The rest of
//! the daemon (start-up, dispatch, status) is still in [`crate::app`].

pub mod queue;
