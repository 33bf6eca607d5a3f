//! `GET /reports…`: the report store over HTTP — listings (filtered, paged), the JSON export,
//! the page, and media files.
//!
//! URLs carry report ids and segment indices only, never paths: an id is validated by
//! [`ReportId::parse`] before use, and a media file is found through the store's index (the
//! report's segment `n`), so no part of a URL ever reaches the file system.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, report_id, Api, HttpError};
use crate::report::{ListFilter, ReportError, Segment};

/// Largest page of a listing.
pub const MAX_LIMIT: usize = 500;
pub const DEFAULT_LIMIT: usize = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    /// RFC 3339; reports begun at or after.
    since: Option<String>,
    /// RFC 3339; reports begun before.
    until: Option<String>,
    /// `monitor`, `monitor:CAMERA`, `alert`, `alert:RULE`, `api`, `voice`, `cli`.
    trigger: Option<String>,
    camera: Option<String>,
    status: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, msg)
}

fn time(key: &str, v: &str) -> Result<jiff::Timestamp, HttpError> {
    v.parse().map_err(|e| {
        bad(format!(
            "{key}: {v:?} is not an RFC 3339 time (e.g. 2026-11-24T10:15:30Z): {e}"
        ))
    })
}

/// A cursor is `<created_ms>.<report id>` of the last report of a page: a position in the
/// listing order (the report itself may be gone since).
fn cursor(v: &str) -> Result<(jiff::Timestamp, String), HttpError> {
    let invalid = || {
        bad(format!(
            "cursor: {v:?} is not a cursor from a previous page"
        ))
    };
    let (ms, id) = v.split_once('.').ok_or_else(invalid)?;
    if ms.is_empty() || ms.len() > 14 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let t = jiff::Timestamp::from_millisecond(ms.parse().map_err(|_| invalid())?)
        .map_err(|_| invalid())?;
    let form = id.len() == 21 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !form {
        return Err(invalid());
    }
    Ok((t, id.to_string()))
}

fn store_error(e: ReportError) -> HttpError {
    match e {
        ReportError::NotFound { id, .. } => {
            HttpError::new(StatusCode::NOT_FOUND, format!("no report {id}"))
        }
        ReportError::BadId { .. } | ReportError::BadTrigger { .. } => bad(e.to_string()),
        e => HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /reports`: newest first, `limit` per page (default 50, at most 500); `next` is the
/// cursor of the following page, `null` on the last.
pub async fn list(
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, HttpError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(bad(format!("limit: {limit} is out of range 1–{MAX_LIMIT}")));
    }
    if let Some(s) = &q.status {
        if !["open", "complete", "incomplete"].contains(&s.as_str()) {
            return Err(bad(format!(
                "status: {s:?} is not open, complete or incomplete"
            )));
        }
    }
    if let Some(c) = &q.camera {
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!(
                "camera: {c:?} is not a camera name (letters, digits, '-' or '_')"
            )));
        }
    }
    if let Some(t) = &q.trigger {
        if t != "monitor" && t != "alert" {
            t.parse::<crate::report::Trigger>()
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    let filter = ListFilter {
        // One more than asked tells whether there is a next page.
        limit: Some(limit + 1),
        trigger: q.trigger.clone(),
        status: q.status.clone(),
        since: q.since.as_deref().map(|v| time("since", v)).transpose()?,
        until: q.until.as_deref().map(|v| time("until", v)).transpose()?,
        camera: q.camera.clone(),
        after: q.cursor.as_deref().map(cursor).transpose()?,
    };
    let store = api.inner.app.store.clone();
    let mut reports = blocking(move || store.list(&filter))
        .await?
        .map_err(store_error)?;
    let next = if reports.len() > limit {
        reports.truncate(limit);
        reports
            .last()
            .map(|r| format!("{}.{}", r.created_at.as_millisecond(), r.id))
    } else {
        None
    };
    let items: Vec<Value> = reports
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            v["url"] = json!(format!("/reports/{}", r.id));
            v
        })
        .collect();
    Ok(Json(json!({ "reports": items, "next": next })))
}

/// `GET /reports/{id}` (the JSON export) and `GET /reports/{id}.html` (the page, its media
/// linked through this API).
pub async fn get_one(
    State(api): State<Api>,
    Path(raw): Path<String>,
) -> Result<Response, HttpError> {
    let (raw_id, html) = match raw.strip_suffix(".html") {
        Some(id) => (id, true),
        None => (raw.as_str(), false),
    };
    let id = report_id(raw_id)?;
    let store = api.inner.app.store.clone();
    let (report, mark) = blocking(move || {
        let r = store.get(&id)?;
        let mark = if html { store.alert_mark(&id)? } else { None };
        Ok::<_, ReportError>((r, mark))
    })
    .await?
    .map_err(store_error)?;
    if html {
        let rid = report.id.clone();
        // Relative to /reports/{id}.html, so the page works behind a proxy that mounts the API
        // under a prefix.
        let media = move |n: u32, _: &crate::report::MediaRef| format!("{rid}/media/{n}");
        let page = crate::report::html::report_page_full(&report, &media, None, mark.as_ref());
        let mut res = page.into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return Ok(res);
    }
    let mut res = crate::report::export_json(&report).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// `GET /reports/{id}/media/{n}`: segment `n`'s JPEG or WAV, found through the index.
pub async fn media(
    State(api): State<Api>,
    Path((raw_id, raw_n)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let id = report_id(&raw_id)?;
    let n: u32 = raw_n
        .parse()
        .map_err(|_| bad(format!("{raw_n:?} is not a segment index")))?;
    let store = api.inner.app.store.clone();
    let (bytes, ctype) = blocking(move || -> Result<(Vec<u8>, &'static str), HttpError> {
        let report = store.get(&id).map_err(store_error)?;
        let seg = report
            .segments
            .iter()
            .find(|s| s.index() == n)
            .ok_or_else(|| {
                HttpError::new(
                    StatusCode::NOT_FOUND,
                    format!("report {id} has no segment {n}"),
                )
            })?;
        let (m, ctype) = match seg {
            Segment::Image(i) => (&i.media, "image/jpeg"),
            Segment::Region(r) => (&r.media, "image/jpeg"),
            Segment::Audio(a) => (&a.media, "audio/wav"),
            Segment::Text(_) => {
                return Err(HttpError::new(
                    StatusCode::NOT_FOUND,
                    format!("segment {n} of report {id} is text; it has no media"),
                ))
            }
        };
        let path = store.media_path(m);
        let bytes = std::fs::read(&path).map_err(|e| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("report {id} segment {n}: the media file cannot be read: {e}"),
            )
        })?;
        Ok((bytes, ctype))
    })
    .await??;
    let mut res = bytes.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // Media never change once acknowledged.
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    Ok(res)
}
