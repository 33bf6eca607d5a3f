//! Token stream → text → sentences.
