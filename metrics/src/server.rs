//! `GET /metrics` over HTTP/1.1 (hyper), on a thread and runtime of its own. Bounded: at
//! most [`MAX_CONNECTIONS`] at once (more are closed at once), a request's head must arrive
//! within [`HEAD_TIMEOUT`], and a connection lasts at most [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

pub const MAX_CONNECTIONS: usize = 16;
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the metrics thread: {0}")]
    Thread(std::io::Error),
}

/// The endpoint, served until the process exits.
#[derive(Debug, Clone, Copy)]
pub struct MetricsEndpoint {
    pub addr: SocketAddr,
}

/// The registry in the Prometheus text format (version 0.0.4).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String fails only if a metric's own encoding does, which ours never do.
    prometheus_text::encode(&mut text, registry).expect("metrics encode into a String");
    text
}

/// Listens on `addr` now (so a bad address is the caller's error) and answers scrapes on a
/// thread of its own from then on.
pub fn serve(addr: SocketAddr, registry: Registry) -> Result<MetricsEndpoint, MetricsError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| MetricsError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(|source| MetricsError::Listen { addr, source })?;
    listener.set_nonblocking(true).map_err(|source| MetricsError::Listen { addr, source })?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(MetricsError::Thread)?;
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, registry).await,
                    Err(e) => tracing::error!("metrics endpoint on {local} stopped: {e}"),
                }
            })
        })
        .map_err(MetricsError::Thread)?;
    tracing::info!("metrics on http://{local}/metrics");
    Ok(MetricsEndpoint { addr: local })
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait a little instead of spinning.
                tracing::warn!("metrics endpoint: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, registry.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // Errors here are the scraper's (a reset, a malformed request): nothing to log.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

async fn answer(req: Request<Incoming>, registry: Arc<Registry>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if req.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n".into()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    let mut response = text(StatusCode::OK, encode(&registry));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(prometheus_text::CONTENT_TYPE));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn metrics_are_served_at_their_path_and_nothing_else() {
        let endpoint = serve("127.0.0.1:0".parse().unwrap(), crate::daemon_registry("test")).unwrap();
        let ok = get(endpoint.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("content-type: text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("sheep_build_info{daemon=\"test\""), "{ok}");
        let missing = get(endpoint.addr, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
        let post =
            get(endpoint.addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
        assert!(post.contains("allow: GET, HEAD"), "{post}");
    }

    #[test]
    fn an_address_that_cannot_be_listened_on_is_an_error_at_once() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = serve(taken.local_addr().unwrap(), crate::daemon_registry("test")).unwrap_err();
        assert!(matches!(err, MetricsError::Listen { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot listen for metrics on 127.0.0.1:"), "{err}");
    }
}
