//! Serving: the accept loop, one request's answer (faults applied in
//! order, then the blob's bytes under the HTTP rules of `http_ranges`), and
//! the body produced in chunks.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::header;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use http_ranges::Decision;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::Blob;
use super::Content;
use super::Fault;
use super::InFlight;
use super::RequestRecord;
use super::Shared;

/// Size of the chunks a response body is produced in.
const CHUNK: u64 = 64 * 1024;

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. EMFILE; back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let connection = shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let handshake =
                Duration::from_micros(shared.connection_latency_us.load(Ordering::Relaxed));
            if !handshake.is_zero() {
                shared.delayed_connections.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(handshake).await;
            }
            let service =
                hyper::service::service_fn(move |req| handle(shared.clone(), connection, req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

type Body = BoxBody<Bytes, io::Error>;

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn text(s: &str) -> Body {
    Full::new(Bytes::from(s.to_string()))
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn status_response(status: u16, body: &str) -> Response<Body> {
    let mut r = Response::new(text(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn redirect_response(status: u16, location: &str) -> Response<Body> {
    let mut r = status_response(status, "");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    shared: Arc<Shared>,
    connection: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, io::Error> {
    let seq = shared.requests.fetch_add(1, Ordering::Relaxed);
    let mut in_flight = Some(InFlight::new(&shared));
    let mut record = RequestRecord {
        seq,
        method: req.method().to_string(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
        range: header_str(&req, header::RANGE).map(str::to_string),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        fault: None,
        status: None,
        connection,
        latency: Duration::ZERO,
    };
    shared.lock().arrivals.push(record.clone());
    let finish = |mut record: RequestRecord, response: Response<Body>| {
        record.status = Some(response.status().as_u16());
        shared.lock().log.push(record);
        Ok(response)
    };

    let latency = Duration::from_micros(shared.latency_us.load(Ordering::Relaxed));
    if !latency.is_zero() {
        shared.delayed_requests.fetch_add(1, Ordering::Relaxed);
        record.latency = latency;
        tokio::time::sleep(latency).await;
    }

    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let mut modifier = None;
    if let Some(fault) = shared.take_fault(&method, &path) {
        record.fault = Some(fault.name());
        match fault {
            Fault::Status {
                status,
                retry_after,
            } => {
                let mut r = status_response(status, "injected fault\n");
                if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return finish(record, r);
            }
            Fault::Redirect { location, status } => {
                return finish(record, redirect_response(status, &location));
            }
            Fault::RefuseHead => {
                let mut r = status_response(405, "");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET"));
                return finish(record, r);
            }
            Fault::DropConnection => {
                shared.lock().log.push(record);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "injected fault: drop connection",
                ));
            }
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::ReplaceContent(data) => {
                let len = data.len() as u64;
                shared.put(&path, Content::Mem(data), len);
            }
            other => modifier = Some(other),
        }
    }

    let (required_token, redirect, blob, send_etag, send_last_modified) = {
        let state = shared.lock();
        (
            state.required_token.clone(),
            state
                .redirects
                .get(&path)
                .map(|r| (r.status, r.location.clone())),
            state.blobs.get(&path).cloned(),
            !state.no_etag,
            !state.no_last_modified,
        )
    };
    if let Some(token) = required_token {
        let ok = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == token));
        if !ok {
            return finish(record, status_response(403, "missing or wrong token\n"));
        }
    }
    if let Some((status, location)) = redirect {
        return finish(record, redirect_response(status, &location));
    }
    let Some(blob) = blob else {
        return finish(record, status_response(404, "not found\n"));
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = status_response(405, "");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return finish(record, r);
    }

    let ranges_supported = !matches!(modifier, Some(Fault::IgnoreRange));
    let validators = |r: &mut Response<Body>| {
        let h = r.headers_mut();
        if let Some(v) = send_etag
            .then(|| HeaderValue::from_str(&blob.etag).ok())
            .flatten()
        {
            h.insert(header::ETAG, v);
        }
        if let Some(v) = send_last_modified
            .then(|| HeaderValue::from_str(&blob.last_modified).ok())
            .flatten()
        {
            h.insert(header::LAST_MODIFIED, v);
        }
        if ranges_supported {
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
    };

    let conditions = http_ranges::Conditions {
        if_match: header_str(&req, header::IF_MATCH),
        if_none_match: header_str(&req, header::IF_NONE_MATCH),
        if_modified_since: header_str(&req, header::IF_MODIFIED_SINCE),
        if_unmodified_since: header_str(&req, header::IF_UNMODIFIED_SINCE),
        if_range: header_str(&req, header::IF_RANGE),
        range: header_str(&req, header::RANGE),
    };
    let version = http_ranges::Version {
        len: blob.len,
        etag: blob.etag.clone(),
        modified: blob.last_modified_secs,
    };
    let mut decision = http_ranges::decide(&conditions, &version);
    if matches!(modifier, Some(Fault::IgnoreRange))
        && matches!(
            decision,
            Decision::Partial { .. } | Decision::RangeNotSatisfiable
        )
    {
        decision = Decision::Full;
    }

    let (status, mut start, len) = match decision {
        Decision::Full => (StatusCode::OK, 0, blob.len),
        Decision::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Decision::PreconditionFailed => {
            let mut r = status_response(412, "precondition failed\n");
            validators(&mut r);
            return finish(record, r);
        }
        Decision::NotModified => {
            let mut r = status_response(304, "");
            validators(&mut r);
            return finish(record, r);
        }
        Decision::RangeNotSatisfiable => {
            let mut r = status_response(416, "");
            validators(&mut r);
            if let Ok(v) = HeaderValue::from_str(&http_ranges::content_range::unsatisfied(blob.len))
            {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return finish(record, r);
        }
    };
    // The range the Content-Range header claims (before body faults).
    if let Some(Fault::WrongContentRange { shift }) = modifier {
        let max_start = blob.len - len;
        start = if shift >= 0 {
            start.saturating_add(shift.unsigned_abs()).min(max_start)
        } else {
            start.saturating_sub(shift.unsigned_abs())
        };
    }
    let claimed = (start, len);
    let mut plan = BodyPlan {
        offset: start,
        data_len: len,
        zeros: 0,
        stall: None,
        fail_after: None,
    };
    match &modifier {
        Some(Fault::ShortBody { by }) => plan.data_len = len.saturating_sub(*by),
        Some(Fault::LongBody { by }) => {
            let total = len.saturating_add(*by);
            plan.data_len = total.min(blob.len - start);
            plan.zeros = total - plan.data_len;
        }
        Some(Fault::ResetMidBody { after }) => {
            plan.fail_after = Some(after.unwrap_or(len / 2).min(len));
        }
        Some(Fault::StallBody { after, duration }) => {
            plan.stall = Some((after.unwrap_or(len / 2).min(len), *duration));
        }
        _ => {}
    }
    let body_len = plan.data_len + plan.zeros;
    // A reset body announces the full length and then fails part way.
    let content_length = if plan.fail_after.is_some() {
        len
    } else {
        body_len
    };

    let body = if method == Method::HEAD || body_len == 0 {
        empty()
    } else {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(produce_body(blob.clone(), plan, tx));
        ChanBody {
            rx,
            counter: shared.bytes_served.clone(),
            _in_flight: in_flight.take(),
        }
        .boxed()
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    validators(&mut r);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(content_length));
    if status == StatusCode::PARTIAL_CONTENT {
        let (s, l) = claimed;
        let content_range = http_ranges::ContentRange {
            start: s,
            end: s + l - 1,
            total: Some(blob.len),
        };
        if let Ok(v) = HeaderValue::from_str(&content_range.to_string()) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    finish(record, r)
}

/// What the body producer sends: `data_len` blob bytes from `offset`, then
/// `zeros` zero bytes; optionally pausing or failing after some bytes.
#[derive(Debug, Clone, Copy)]
struct BodyPlan {
    offset: u64,
    data_len: u64,
    zeros: u64,
    stall: Option<(u64, Duration)>,
    fail_after: Option<u64>,
}

async fn produce_body(blob: Arc<Blob>, plan: BodyPlan, tx: mpsc::Sender<io::Result<Bytes>>) {
    let total = plan.data_len + plan.zeros;
    let mut sent = 0u64;
    let mut stall = plan.stall;
    loop {
        if plan.fail_after.is_some_and(|f| sent >= f) {
            let _ = tx
                .send(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "injected fault: reset mid-body",
                )))
                .await;
            return;
        }
        if let Some((at, d)) = stall
            && sent >= at
        {
            tokio::time::sleep(d).await;
            stall = None;
        }
        if sent >= total {
            return;
        }
        let mut limit = CHUNK.min(total - sent);
        if let Some(f) = plan.fail_after {
            limit = limit.min(f - sent);
        }
        if let Some((at, _)) = stall {
            limit = limit.min(at - sent);
        }
        let chunk = if sent < plan.data_len {
            let n = limit.min(plan.data_len - sent);
            let offset = plan.offset + sent;
            let blob = blob.clone();
            match tokio::task::spawn_blocking(move || blob.read(offset, n)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    return;
                }
            }
        } else {
            Bytes::from(vec![0u8; usize::try_from(limit).unwrap_or(0)])
        };
        sent += chunk.len() as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
}

/// A response body fed by the producer task through a channel; counts the
/// bytes it hands to hyper.
struct ChanBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    counter: Arc<AtomicU64>,
    _in_flight: Option<InFlight>,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.counter.fetch_add(b.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
