//! Infrastructure shared by the stages that own files on disk.
//!
//! - [`duration`]: the one duration type of configs and command lines (`"500ms"`, `"10m"`).
//! - [`hugepages`]: once a model is loaded, its weights are moved onto transparent huge pages
//!   (`MADV_COLLAPSE`).
//! - [`fs`]: atomic writes, directory fsyncs, the exclusive lock, sha256 of a file, a directory
//!   walk that lists links without following them.
//! - [`tree`]: a directory tree gemba owns, walked and cleaned through directory handles that
//!   never follow a symbolic link, so no sweep, eviction or gc can leave its root.

pub mod duration;
pub(crate) mod fs;
pub mod hugepages;
pub(crate) mod tree;
