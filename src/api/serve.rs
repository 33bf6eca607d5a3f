//! The API's connections: accepted, capped, timed and handed to hyper one by one.
//!
//! In: the bound listener, the router, the shutdown token and the `[api]` limits. Out: one task
//! per connection, each serving HTTP/1.1 through hyper with
//! - a **header timeout** (`api.header_timeout`): a client must send each request's headers
//!   within it, and an idle keep-alive connection is closed after it (hyper's
//!   `header_read_timeout`; slowloris connections that drip headers are closed and counted);
//! - a **connection cap** (`api.max_connections`): a connection past it waits up to 250 ms for a
//!   slot (one whose client just closed may not have given it back yet), then gets a `503` JSON
//!   answer and is closed (counted), so idle sockets cannot exhaust the daemon's descriptors;
//! - **JSON for hyper's own answers**: a request hyper cannot parse (URI over 64 KiB, headers
//!   over its buffer, a malformed request line) is answered by hyper itself with an empty body;
//!   [`JsonParseErrors`] rewrites that answer into the API's `{"error": …}` form on its way out.
//!
//! The body timeout (`api.body_timeout`) is applied where bodies are read (`POST /ask`).
//! Shutdown: on the token, the listener stops accepting and every connection is asked to finish
//! its response in flight and close (hyper's graceful shutdown); the task ends when all have.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::metrics::Metrics;

/// How long a new connection waits for a slot before it is refused.
const SLOT_WAIT: Duration = Duration::from_millis(250);

/// What [`serve`] needs from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Accepts until `shutdown`, then waits for the open connections to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    log::warn!("api: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slots = Arc::clone(&slots);
        let router = router.clone();
        let metrics = Arc::clone(&metrics);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // A connection closed by its client a moment ago may not have given its slot back
            // yet: a new one waits briefly for a slot before it is refused.
            let Ok(Ok(slot)) = tokio::time::timeout(SLOT_WAIT, slots.acquire_owned()).await else {
                metrics.connections_refused.inc();
                refuse(stream, limits.max_connections).await;
                return;
            };
            let _ = stream.set_nodelay(true);
            metrics.connections.inc();
            let service = TowerToHyperService::new(router.map_request(
                |req: axum::http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new),
            ));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(JsonParseErrors::new(stream)), service);
            if let Err(e) = watcher.watch(conn).await {
                if e.is_timeout() {
                    metrics.connections_timed_out.inc();
                }
                log::debug!("api: connection ended: {e}");
            }
            metrics.connections.dec();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Answers a connection past the cap with 503 and closes it (never waiting long on it).
async fn refuse(mut stream: tokio::net::TcpStream, max: usize) {
    let body = serde_json::json!({
        "error": format!("too many connections: the API serves at most {max} at once (api.max_connections); try again later")
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Answer, then read what the client is still sending for a moment before closing: closing
    // with unread input would reset the connection and lose the answer on the client's side.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await, Ok(n) if n > 0)
        {
        }
    })
    .await;
}

/// A socket whose outgoing bytes pass through unchanged, except hyper's automatic answers to
/// unparsable requests: a response head with a 4xx/5xx status and no `content-type` is one
/// hyper wrote itself (every answer of the router carries a JSON content type), and it goes out
/// as the same status with a JSON body. hyper closes the connection after such an answer.
pub struct JsonParseErrors<S> {
    inner: S,
    /// A rewritten answer being written, and how many of hyper's bytes it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonParseErrors<S> {
    pub fn new(inner: S) -> Self {
        JsonParseErrors {
            inner,
            pending: None,
        }
    }
}

/// The JSON answer standing for one of hyper's bare error heads, if `buf` starts with one.
fn rewrite(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    if !(buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.1 5")) {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let lower = head.to_ascii_lowercase();
    if lower.contains("\r\ncontent-type:") || !lower.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let status_line = head.lines().next()?;
    let mut words = status_line.splitn(3, ' ');
    let (_, code, reason) = (words.next()?, words.next()?, words.next().unwrap_or(""));
    let msg = match code {
        "414" => "the request's URI is too long (at most 64 KiB)".to_string(),
        "431" => "the request's headers are too large".to_string(),
        "400" => "the request is not valid HTTP/1.1".to_string(),
        _ => reason.to_string(),
    };
    let body = serde_json::json!({ "error": msg }).to_string();
    let out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Some((out.into_bytes(), end))
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite(buf) {
                Some((out, stands_for)) => this.pending = Some((out, 0, stands_for)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let (out, written, stands_for) = this.pending.as_mut().expect("set above");
        while *written < out.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &out[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let n = *stands_for;
        this.pending = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then hands each response head over in one buffer, where it can be
    // recognised.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_error_heads_become_json_and_nothing_else_changes() {
        let bare = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 03:00:00 GMT\r\n\r\n";
        let (out, n) = rewrite(bare).unwrap();
        assert_eq!(n, bare.len());
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\n"),
            "{out}"
        );
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(out.matches("content-length: ").count(), 1);
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["error"]
                .as_str()
                .unwrap()
                .contains("URI")
        );
        // The router's own answers (JSON already), successes and body bytes pass untouched.
        for other in [
            &b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"error\":\"\"}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"data: {\"event\":\"token\"}\n\n",
            b"HTTP/1.1 4",
        ] {
            assert!(rewrite(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }
}
