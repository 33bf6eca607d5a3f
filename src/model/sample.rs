//! Sampling: pick the next token from one position's logits.
