//! Infrastructure shared by the stages that own files on disk.
//!
//! - [`tree`]: a directory tree gemba owns, walked and cleaned through directory handles that
//!   never follow a symbolic link, so no sweep, eviction or gc can leave its root.

pub mod tree;
