//! Requests to a running server's HTTP API, for what the Kafka protocol
//! does not carry (SQL, subscriptions, sizes on disk, the log cleaner).

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub async fn connect(addr: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| {
        format!("cannot reach fluxo's HTTP API at {addr}; is `fluxo serve` running? (set --http-addr)")
    })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// POSTs JSON; the status and the body.
pub async fn post_json(addr: &str, path: &str, body: &Value) -> anyhow::Result<(u16, Bytes)> {
    let mut sender = connect(addr).await?;
    let req = Request::post(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// GETs a JSON document; None unless the server answers 200 with JSON.
pub async fn get_json(addr: &str, path: &str) -> anyhow::Result<Option<Value>> {
    let mut sender = connect(addr).await?;
    let req = Request::get(path)
        .header("host", addr)
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    if resp.status() != 200 {
        return Ok(None);
    }
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body).ok())
}
