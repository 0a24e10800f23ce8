//! The API's client (`ftvm ctl`, `ftvm status`): one request over the Unix socket, its status
//! and JSON answer.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the API socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the API: {0}")]
    Http(String),
    #[error("the API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the API's answer is not JSON: {0}")]
    NotJson(String),
}

/// `method path` with `body` (JSON) on the API at `socket`; the status and the answer
/// (JSON, or the text of a non-JSON answer such as /metrics, as a string).
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    within: Duration,
) -> Result<(u16, Value), ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ClientError::Http(e.to_string()))?;
    rt.block_on(async {
        tokio::time::timeout(within, exchange(socket, method, path, body))
            .await
            .map_err(|_| ClientError::Timeout(within))?
    })
}

async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), ClientError> {
    let http = |e: &dyn std::fmt::Display| ClientError::Http(e.to_string());
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost");
    let bytes = match body {
        Some(v) => {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(bytes)).map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status().as_u16();
    let json = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !json {
        return Ok((status, Value::String(text)));
    }
    let v = serde_json::from_str(&text).map_err(|_| ClientError::NotJson(text))?;
    Ok((status, v))
}
