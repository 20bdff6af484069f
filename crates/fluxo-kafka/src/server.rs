//! Accepting connections, framing, decoding, and ordered responses.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::handlers::{self, RequestContext, ResponseFuture};
use crate::Broker;

/// How many requests of one connection may be in progress at once.
const MAX_IN_FLIGHT: usize = 64;

/// Stops the server when dropped or told to.
pub struct ServerHandle {
    shutdown: watch::Sender<bool>,
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, closes connections, and waits for the accept loop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Serves the Kafka protocol on `listener` until shut down.
pub fn serve(listener: TcpListener, broker: Arc<Broker>) -> std::io::Result<ServerHandle> {
    let local_addr = listener.local_addr()?;
    let (shutdown, mut stop) = watch::channel(false);
    let stop_for_conns = shutdown.subscribe();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let broker = broker.clone();
                        let stop = stop_for_conns.clone();
                        tokio::spawn(async move {
                            if let Err(e) = handle_connection(stream, peer, broker, stop).await {
                                tracing::debug!(%peer, "connection closed: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
    Ok(ServerHandle {
        shutdown,
        local_addr,
        task,
    })
}

/// One request on its way to the writer.
struct Pending {
    /// When the request was decoded, for the per-API latency histogram.
    started: std::time::Instant,
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    response: ResponseFuture,
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let (read_half, mut write_half) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Pending>(MAX_IN_FLIGHT);
    let _open = broker.metrics.connection_opened();
    let metrics = broker.metrics.clone();

    let writer = tokio::spawn(async move {
        let mut in_progress = FuturesOrdered::new();
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut reader_done = false;
        loop {
            tokio::select! {
                next = rx.recv(), if !reader_done => match next {
                    Some(p) => {
                        let metrics = metrics.clone();
                        in_progress.push_back(async move {
                            let response = p.response.await;
                            metrics.observe_request(p.api_key, p.started.elapsed());
                            (p.correlation_id, p.api_key, p.version, response)
                        })
                    }
                    None => reader_done = true,
                },
                Some((correlation_id, api_key, version, response)) = in_progress.next() => {
                    let Some(response) = response else { continue };
                    out.clear();
                    if let Err(e) = encode_response(&mut out, correlation_id, api_key, version, &response) {
                        tracing::error!(%peer, ?api_key, version, "could not encode a response; please report this bug: {e}");
                        return;
                    }
                    if write_half.write_all(&out).await.is_err() {
                        return;
                    }
                }
                else => return,
            }
        }
    });

    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut session = handlers::sasl::Session::default();
    let result = loop {
        let frame = tokio::select! {
            _ = stop.changed() => break Ok(()),
            f = read_frame(&mut reader, frame_limit(&broker, &session), peer) => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let ctx = RequestContext {
            local_addr: local,
            peer,
        };
        match decode_and_dispatch(frame, &broker, &ctx, &mut session) {
            Ok((pending, close)) => {
                if tx.send(pending).await.is_err() || close {
                    break Ok(());
                }
            }
            Err(why) => {
                tracing::warn!(%peer, "closing connection: {why}");
                break Ok(());
            }
        }
    };
    drop(tx);
    // Let already-accepted requests finish and be answered.
    let _ = writer.await;
    result
}

/// The largest frame a connection may send now: before it has
/// authenticated (on a broker that asks for it), only what ApiVersions and
/// SASL need, as Kafka's `sasl.server.max.receive.size` (512 KiB), so that
/// no one unauthenticated makes the broker hold a large request.
fn frame_limit(broker: &Broker, session: &handlers::sasl::Session) -> usize {
    const BEFORE_AUTHENTICATION: usize = 512 * 1024;
    match broker.config.sasl_plain.is_some() && !session.is_authenticated() {
        true => BEFORE_AUTHENTICATION.min(broker.config.max_request_bytes),
        false => broker.config.max_request_bytes,
    }
}

/// Reads one size-prefixed frame; None on a clean end of stream.
async fn read_frame(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    max: usize,
    peer: SocketAddr,
) -> std::io::Result<Option<Bytes>> {
    let size = match reader.read_i32().await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if size < 4 || size as usize > max {
        tracing::warn!(%peer, "closing connection: request size {size} is outside 4..={max} (socket.request.max.bytes)");
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad request size",
        ));
    }
    let mut buf = BytesMut::zeroed(size as usize);
    reader.read_exact(&mut buf).await?;
    Ok(Some(buf.freeze()))
}

/// Decodes a frame and starts its handler; true when the connection is to
/// close once that is answered (a failed authentication). An Err closes the
/// connection at once.
fn decode_and_dispatch(
    mut frame: Bytes,
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    session: &mut handlers::sasl::Session,
) -> Result<(Pending, bool), String> {
    if frame.len() < 8 {
        return Err(format!(
            "a {}-byte frame is too short for a request header",
            frame.len()
        ));
    }
    let started = std::time::Instant::now();
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api_key) = ApiKey::try_from(api_key_raw) else {
        return Err(format!("unknown API key {api_key_raw}"));
    };
    let supported = handlers::supported_versions(api_key);
    let in_range = supported.is_some_and(|(min, max)| (min..=max).contains(&version));
    if !in_range {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer an ApiVersions we cannot parse with v0 and
            // UNSUPPORTED_VERSION, so the client retries with a version we know.
            let response = handlers::api_versions::unsupported_version_response();
            return Ok((
                Pending {
                    started,
                    correlation_id,
                    api_key,
                    version: 0,
                    response: Box::pin(async move { Some(response) }),
                },
                false,
            ));
        }
        return Err(format!(
            "{api_key:?} v{version} is not supported (supported: {supported:?})"
        ));
    }
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| format!("bad {api_key:?} v{version} header: {e}"))?;
    let request = RequestKind::decode(api_key, &mut frame, version)
        .map_err(|e| format!("bad {api_key:?} v{version} request: {e}"))?;
    if frame.has_remaining() {
        tracing::debug!(peer = %ctx.peer, ?api_key, version, "{} trailing bytes after request", frame.remaining());
    }
    let users = broker.config.sasl_plain.as_ref();
    let mut close = false;
    let response: ResponseFuture = match request {
        RequestKind::SaslHandshake(r) => {
            let answer = handlers::sasl::handshake(users, session, &r);
            Box::pin(async move { Some(ResponseKind::SaslHandshake(answer)) })
        }
        RequestKind::SaslAuthenticate(r) => {
            let (answer, ok) = handlers::sasl::authenticate(users, session, &r);
            if ok {
                tracing::debug!(peer = %ctx.peer, "authenticated: {session:?}");
            } else {
                tracing::warn!(peer = %ctx.peer, "SASL authentication failed; closing the connection");
                close = true;
            }
            Box::pin(async move { Some(ResponseKind::SaslAuthenticate(answer)) })
        }
        request => {
            if users.is_some() && !session.is_authenticated() && api_key != ApiKey::ApiVersions {
                return Err(format!(
                    "{api_key:?} before SASL authentication (this broker requires SASL/PLAIN)"
                ));
            }
            handlers::dispatch(broker, ctx, &header, request)
        }
    };
    Ok((
        Pending {
            started,
            correlation_id,
            api_key,
            version,
            response,
        },
        close,
    ))
}

fn encode_response(
    out: &mut BytesMut,
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    response: &ResponseKind,
) -> anyhow::Result<()> {
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let header_version = api_key.response_header_version(version);
    out.extend_from_slice(&[0, 0, 0, 0]);
    header.encode(out, header_version)?;
    response.encode(out, version)?;
    let len = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}
