//! Where things live inside a store directory. Pure: paths are computed from validated
//! [`ReportId`]s only, relative to the store directory and `/`-separated (as stored in the index
//! and written into HTML links).
//!
//! ```text
//! <store>/index.sqlite            the index (SQLite, WAL: -wal and -shm beside it)
//! <store>/lock                    held (flock) by the process that writes the store
//! <store>/reserve                 space held back for the index, given up when the disk is full
//! <store>/media/YYYY/MM/DD/<id>/<n>.jpg|wav    segment n's media, dated by the report's start
//! <store>/html/YYYY/MM/DD/<id>.html            the report's page
//! <store>/html/index.html                      newest reports first
//! ```
//! Files being written are named `.tmp-*` beside their final name; recovery removes leftovers.

use super::ReportId;

pub const INDEX_FILE: &str = "index.sqlite";
pub const LOCK_FILE: &str = "lock";
pub const RESERVE_FILE: &str = "reserve";
pub const MEDIA_DIR: &str = "media";
pub const HTML_DIR: &str = "html";
pub const INDEX_PAGE: &str = "html/index.html";
/// Prefix of a file still being written; never a final name (the shared atomic write's).
pub use crate::sys::fs::TEMP_PREFIX;

/// How a segment's media is encoded, which fixes its file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Jpeg,
    Wav,
}

impl MediaKind {
    pub fn ext(self) -> &'static str {
        match self {
            MediaKind::Jpeg => "jpg",
            MediaKind::Wav => "wav",
        }
    }
}

/// `media/YYYY/MM/DD/<id>`: the directory holding all of a report's media.
pub fn media_dir(id: &ReportId) -> String {
    format!("{MEDIA_DIR}/{}/{id}", id.date_dir())
}

/// `media/YYYY/MM/DD/<id>/<index>.<ext>`.
pub fn media_path(id: &ReportId, index: u32, kind: MediaKind) -> String {
    format!("{}/{index}.{}", media_dir(id), kind.ext())
}

/// `html/YYYY/MM/DD/<id>.html`.
pub fn page_path(id: &ReportId) -> String {
    format!("{HTML_DIR}/{}", page_link_from_index(id))
}

/// The report page's address relative to the index page.
pub fn page_link_from_index(id: &ReportId) -> String {
    format!("{}/{id}.html", id.date_dir())
}

/// From a report page back to the store directory, so `media/…` paths work from `file://`.
pub const PAGE_TO_STORE: &str = "../../../../";

/// From a report page back to the index page.
pub const PAGE_TO_INDEX: &str = "../../../index.html";

/// The report id of a page path (`html/YYYY/MM/DD/<id>.html`), if it is one and its date
/// directory matches the id.
pub fn id_of_page(rel: &str) -> Option<ReportId> {
    let name = rel
        .strip_prefix(HTML_DIR)?
        .strip_prefix('/')?
        .strip_suffix(".html")?;
    let (dirs, id) = name.rsplit_once('/')?;
    let id = ReportId::parse(id).ok()?;
    (dirs == id.date_dir()).then_some(id)
}

/// Whether `rel` is a media path this store writes (`media/YYYY/MM/DD/<id>/<n>.jpg|wav`, the
/// date directory matching the id): only such files may be swept as orphans.
pub fn is_media_path(rel: &str) -> bool {
    let Some(rest) = rel
        .strip_prefix(MEDIA_DIR)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    let Some((dir, file)) = rest.rsplit_once('/') else {
        return false;
    };
    let Some((dates, id)) = dir.rsplit_once('/') else {
        return false;
    };
    let Ok(id) = ReportId::parse(id) else {
        return false;
    };
    let Some((n, ext)) = file.split_once('.') else {
        return false;
    };
    dates == id.date_dir()
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && n.parse::<u32>().is_ok()
        && (ext == MediaKind::Jpeg.ext() || ext == MediaKind::Wav.ext())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ReportId {
        ReportId::parse("20261124T101530Z-3f2a").unwrap()
    }

    #[test]
    fn paths_are_dated_by_the_report_start() {
        assert_eq!(media_dir(&id()), "media/2026/11/24/20261124T101530Z-3f2a");
        assert_eq!(
            media_path(&id(), 0, MediaKind::Jpeg),
            "media/2026/11/24/20261124T101530Z-3f2a/0.jpg"
        );
        assert_eq!(
            media_path(&id(), 12, MediaKind::Wav),
            "media/2026/11/24/20261124T101530Z-3f2a/12.wav"
        );
        assert_eq!(
            page_path(&id()),
            "html/2026/11/24/20261124T101530Z-3f2a.html"
        );
        assert_eq!(
            page_link_from_index(&id()),
            "2026/11/24/20261124T101530Z-3f2a.html"
        );
    }

    #[test]
    fn relative_links_from_a_page_reach_the_store_and_the_index() {
        // A page at html/Y/M/D/<id>.html sits four directories below the store.
        let page_dir_depth = page_path(&id()).matches('/').count();
        assert_eq!(PAGE_TO_STORE.matches("../").count(), page_dir_depth);
        assert_eq!(
            PAGE_TO_INDEX,
            format!("{}index.html", "../".repeat(page_dir_depth - 1))
        );
    }

    #[test]
    fn only_generated_media_names_count_as_ours() {
        assert!(is_media_path(&media_path(&id(), 0, MediaKind::Jpeg)));
        assert!(is_media_path(&media_path(&id(), 17, MediaKind::Wav)));
        for foreign in [
            "media/2026/11/24/20261124T101530Z-3f2a/notes.txt",
            "media/2026/11/24/20261124T101530Z-3f2a/0.png",
            "media/2026/11/25/20261124T101530Z-3f2a/0.jpg",
            "media/2026/11/24/not-an-id/0.jpg",
            "media/photo.jpg",
            "html/2026/11/24/20261124T101530Z-3f2a/0.jpg",
            "media/2026/11/24/20261124T101530Z-3f2a/-1.jpg",
        ] {
            assert!(!is_media_path(foreign), "{foreign}");
        }
    }

    #[test]
    fn page_paths_parse_back() {
        assert_eq!(id_of_page(&page_path(&id())), Some(id()));
        for bad in [
            "html/index.html",
            "html/2026/11/25/20261124T101530Z-3f2a.html",
            "html/2026/11/24/20261124T101530Z-3f2a.htm",
            "html/2026/11/24/.tmp-20261124T101530Z-3f2a.html",
            "media/2026/11/24/20261124T101530Z-3f2a.html",
        ] {
            assert_eq!(id_of_page(bad), None, "{bad}");
        }
    }
}
