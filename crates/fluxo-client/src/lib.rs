//! A small async Kafka-protocol client: fluxo's CLI and benchmarks use it,
//! and the SQL engine reads and writes a Kafka cluster through it in
//! engine-only mode ([`remote::RemoteLog`], [`txn::TransactionalProducer`]).
//!
//! One [`Client`] is one TCP connection. Requests are pipelined: any number
//! may be in flight, and responses are matched to callers by correlation
//! id. The version of each request is the highest that both this client and
//! the broker speak (from ApiVersions at connect), capped per API at the
//! versions this client fills in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub mod cluster;
pub mod group;
/// Kafka's default partitioner belongs to the log, beside the record format.
pub use fluxo_log::partitioner;
pub mod records;
pub mod remote;
pub mod security;
pub mod txn;

use security::{Security, Stream};

pub use records::{encode_batch, fetch, list_offset, produce, Fetched, Isolation, OutRecord};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // `reason`, not `source`: the message already shows it, and a source
    // would print it a second time in an error chain.
    #[error("cannot connect to {addr}: {reason}. Is `fluxo serve` running there? Use --bootstrap HOST:PORT to point elsewhere")]
    Connect {
        addr: String,
        reason: std::io::Error,
    },
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("SASL authentication to {addr} failed: {message}")]
    Authentication { addr: String, message: String },
    #[error("the broker does not support {0:?}")]
    Unsupported(ApiKey),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the connection closed before the response arrived")]
    Closed,
    #[error("{what}: {name} (Kafka error {code}){message}")]
    Broker {
        what: String,
        code: i16,
        name: String,
        message: String,
    },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<Bytes>>>>;

struct Outgoing {
    frame: BytesMut,
    correlation_id: i32,
    reply: Option<oneshot::Sender<Bytes>>,
}

/// How long a request may go unanswered before its connection is given
/// up (Kafka's clients: `request.timeout.ms`, 30 s). Longer than any wait
/// this client asks a broker for (a fetch's `max_wait_ms`, a CreateTopics
/// timeout of 30 s), so only a broker or network that stopped answering
/// reaches it.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

pub struct Client {
    tx: mpsc::Sender<Outgoing>,
    next_correlation: AtomicI32,
    versions: HashMap<i16, (i16, i16)>,
    pub addr: String,
    /// Given up on: a request went unanswered too long (see [`Client::abandon`]).
    abandoned: std::sync::atomic::AtomicBool,
    request_timeout: std::time::Duration,
}

/// The highest version of each request this client knows how to fill.
fn client_max(key: ApiKey) -> i16 {
    match key {
        ApiKey::Produce => 9,
        ApiKey::Fetch => 12,
        ApiKey::ListOffsets => 7,
        ApiKey::Metadata => 12,
        ApiKey::CreateTopics => 7,
        ApiKey::DeleteTopics => 5,
        ApiKey::DescribeConfigs => 4,
        ApiKey::CreatePartitions => 3,
        _ => key.valid_versions().max,
    }
}

impl Client {
    /// A plaintext connection to `addr`.
    pub async fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, &Security::plaintext()).await
    }

    /// A connection to `addr`, secured as `security` says.
    pub async fn connect_with(addr: &str, security: &Security) -> Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|reason| ClientError::Connect {
                addr: addr.to_string(),
                reason,
            })?;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match security.secure(stream, addr).await? {
            Stream::Plain(stream) => {
                let (rd, wr) = stream.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Stream::Tls(stream) => {
                let (rd, wr) = tokio::io::split(*stream);
                (Box::new(rd), Box::new(wr))
            }
        };
        let (tx, mut rx) = mpsc::channel::<Outgoing>(1024);
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                if let Some(reply) = out.reply {
                    if let Ok(mut map) = w.lock() {
                        map.insert(out.correlation_id, reply);
                    }
                }
                if wr.write_all(&out.frame).await.is_err() {
                    break;
                }
            }
        });
        let w = waiters.clone();
        tokio::spawn(async move {
            loop {
                let Ok(size) = rd.read_i32().await else { break };
                if size < 4 {
                    break;
                }
                let mut buf = BytesMut::zeroed(size as usize);
                if rd.read_exact(&mut buf).await.is_err() {
                    break;
                }
                let correlation = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let waiter = w.lock().ok().and_then(|mut m| m.remove(&correlation));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(buf.freeze());
                }
            }
            // Dropping the senders wakes everyone still waiting.
            if let Ok(mut m) = w.lock() {
                m.clear();
            }
        });
        let mut client = Client {
            tx,
            next_correlation: AtomicI32::new(1),
            versions: HashMap::new(),
            addr: addr.to_string(),
            abandoned: Default::default(),
            request_timeout: REQUEST_TIMEOUT,
        };
        let api_versions: ApiVersionsResponse = client
            .send_version(&ApiVersionsRequest::default(), 0)
            .await?;
        if api_versions.error_code != 0 {
            return Err(ClientError::Protocol(format!(
                "ApiVersions failed with error {}",
                api_versions.error_code
            )));
        }
        client.versions = api_versions
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        if let Some(credentials) = security.sasl() {
            client.authenticate(credentials).await?;
        }
        Ok(client)
    }

    /// SASL/PLAIN: SaslHandshake v1, then SaslAuthenticate with RFC 4616's
    /// `NUL user NUL password`.
    async fn authenticate(&self, credentials: &security::PlainCredentials) -> Result<()> {
        let failed = |message: String| ClientError::Authentication {
            addr: self.addr.clone(),
            message,
        };
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = StrBytes::from_static_str("PLAIN");
        if self.version_for(ApiKey::SaslHandshake) != Some(1)
            || self.version_for(ApiKey::SaslAuthenticate).is_none()
        {
            return Err(failed(
                "the broker does not offer SaslHandshake v1 and SaslAuthenticate".into(),
            ));
        }
        let response = self.send_version(&handshake, 1).await?;
        if response.error_code != 0 {
            let offered: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(failed(format!(
                "the broker does not take PLAIN (error {}; it offers {offered:?})",
                response.error_code
            )));
        }
        let mut message = Vec::new();
        message.push(0);
        message.extend_from_slice(credentials.username.as_bytes());
        message.push(0);
        message.extend_from_slice(credentials.password.as_bytes());
        let mut authenticate = SaslAuthenticateRequest::default();
        authenticate.auth_bytes = Bytes::from(message);
        let response = self.send(&authenticate).await?;
        if response.error_code != 0 {
            return Err(failed(format!(
                "{} (error {})",
                response
                    .error_message
                    .as_ref()
                    .map_or("no reason given", |m| m.as_str()),
                response.error_code
            )));
        }
        Ok(())
    }

    /// Whether the connection is gone (a request on it fails at once), or
    /// was given up on.
    pub fn is_closed(&self) -> bool {
        self.abandoned.load(Ordering::Acquire) || self.tx.is_closed()
    }

    /// How long a request may go unanswered ([`REQUEST_TIMEOUT`] unless set).
    pub fn set_request_timeout(&mut self, timeout: std::time::Duration) {
        self.request_timeout = timeout;
    }

    /// Gives the connection up after a request on it went unanswered too
    /// long (a broker that hangs, or a network that drops everything): the
    /// answers on it come in order, so nothing after that request would
    /// come sooner. Whoever keeps connections makes a new one.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// The version to use for `key`, if the broker speaks one we do.
    pub fn version_for(&self, key: ApiKey) -> Option<i16> {
        let (min, max) = *self.versions.get(&(key as i16))?;
        let v = max.min(client_max(key));
        (v >= min).then_some(v)
    }

    /// Sends a request at the best common version and waits for its response.
    pub async fn send<R: Request>(&self, request: &R) -> Result<R::Response> {
        let key = ApiKey::try_from(R::KEY)
            .map_err(|_| ClientError::Protocol(format!("unknown api key {}", R::KEY)))?;
        let version = self.version_for(key).ok_or(ClientError::Unsupported(key))?;
        self.send_version(request, version).await
    }

    /// Sends without waiting for a response (Produce with acks=0).
    pub async fn send_no_response<R: Request>(&self, request: &R) -> Result<()> {
        let key = ApiKey::try_from(R::KEY)
            .map_err(|_| ClientError::Protocol(format!("unknown api key {}", R::KEY)))?;
        let version = self.version_for(key).ok_or(ClientError::Unsupported(key))?;
        let (frame, correlation_id) = self.encode(request, version)?;
        self.tx
            .send(Outgoing {
                frame,
                correlation_id,
                reply: None,
            })
            .await
            .map_err(|_| ClientError::Closed)
    }

    fn encode<R: Request>(&self, request: &R, version: i16) -> Result<(BytesMut, i32)> {
        let correlation_id = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str("fluxo-cli"));
        let mut frame = BytesMut::with_capacity(256);
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, R::header_version(version))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        request
            .encode(&mut frame, version)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let len = (frame.len() - 4) as i32;
        frame[0..4].copy_from_slice(&len.to_be_bytes());
        Ok((frame, correlation_id))
    }

    pub async fn send_version<R: Request>(&self, request: &R, version: i16) -> Result<R::Response> {
        let (frame, correlation_id) = self.encode(request, version)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(Outgoing {
                frame,
                correlation_id,
                reply: Some(reply_tx),
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        let mut bytes = match tokio::time::timeout(self.request_timeout, reply_rx).await {
            Ok(reply) => reply.map_err(|_| ClientError::Closed)?,
            Err(_) => {
                self.abandon();
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} did not answer a {:?} request within {:?}",
                        self.addr,
                        ApiKey::try_from(R::KEY),
                        self.request_timeout
                    ),
                )));
            }
        };
        ResponseHeader::decode(&mut bytes, R::Response::header_version(version))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        R::Response::decode(&mut bytes, version).map_err(|e| {
            ClientError::Protocol(format!("{:?} response: {e}", ApiKey::try_from(R::KEY)))
        })
    }
}

/// Parses "host:port" into a socket address, resolving names.
pub async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|reason| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        })?
        .next()
        .ok_or_else(|| ClientError::Connect {
            addr: addr.to_string(),
            reason: std::io::Error::other("no address"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{MetadataRequest, ResponseHeader};
    use kafka_protocol::protocol::Encodable;
    use tokio::net::TcpListener;

    /// A broker that answers ApiVersions, then never anything again.
    async fn silent_broker() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let size = socket.read_i32().await.unwrap();
            let mut request = vec![0; size as usize];
            socket.read_exact(&mut request).await.unwrap();
            let correlation = i32::from_be_bytes([request[4], request[5], request[6], request[7]]);
            let mut header = ResponseHeader::default();
            header.correlation_id = correlation;
            let mut response = ApiVersionsResponse::default();
            let mut metadata = ApiVersion::default();
            metadata.api_key = ApiKey::Metadata as i16;
            metadata.max_version = 12;
            response.api_keys = vec![metadata];
            let mut body = BytesMut::new();
            header.encode(&mut body, 0).unwrap();
            response.encode(&mut body, 0).unwrap();
            socket.write_i32(body.len() as i32).await.unwrap();
            socket.write_all(&body).await.unwrap();
            // Holds the connection open and says nothing more.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            drop(socket);
        });
        addr
    }

    #[tokio::test]
    async fn a_request_left_unanswered_times_out_and_gives_the_connection_up() {
        let mut client = Client::connect(&silent_broker().await).await.unwrap();
        client.set_request_timeout(std::time::Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = client.send(&MetadataRequest::default()).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(client.is_closed());
    }
}
