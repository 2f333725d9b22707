//! `surge-loadgen bare-http`: the physical reference of `reads` ([`crate::reads`]). One axum
//! route without any middleware, on the same Tokio runtime as Surge's services (the default
//! multi-threaded `#[tokio::main]`), answering a fixed JSON body of a given size: what the
//! kernel's TCP, hyper and axum's routing cost per request on this machine, and so the floor
//! under any read the query API serves.

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;

#[derive(Debug, Clone, Args)]
pub struct BareConfig {
    /// Where to listen (port 0: any free port; the address is printed on the first line).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Size of the JSON body answered, in bytes (that of a cached catalog item).
    #[arg(long, default_value_t = 160)]
    pub body_bytes: usize,
}

/// A JSON object of exactly `size` bytes (at least the 12 of `{"pad":""}` and its quotes).
pub fn json_body(size: usize) -> Bytes {
    let frame = br#"{"pad":""}"#.len();
    let pad = "x".repeat(size.saturating_sub(frame));
    Bytes::from(format!(r#"{{"pad":"{pad}"}}"#))
}

/// Serves until the process is stopped. Prints `listening on <addr>` once bound, so a parent
/// that chose port 0 learns where.
pub async fn run(c: BareConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(c.addr).await?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    out.flush()?;
    serve(listener, c.body_bytes).await
}

/// `GET /v1/catalog/items/{sku}` answering `body_bytes` of JSON, nothing else.
pub async fn serve(listener: tokio::net::TcpListener, body_bytes: usize) -> anyhow::Result<()> {
    let body = json_body(body_bytes);
    let router = Router::new().route(
        "/v1/catalog/items/{sku}",
        get(move || {
            let body = body.clone();
            async move { item(body) }
        }),
    );
    axum::serve(listener, router).await?;
    Ok(())
}

fn item(body: Bytes) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_json_of_the_asked_size() {
        for size in [10, 11, 160, 1000] {
            let body = json_body(size);
            assert_eq!(body.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["pad"].is_string());
        }
    }

    #[tokio::test]
    async fn it_answers_the_fixed_body_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, 200));
        let r = reqwest::get(format!("http://{addr}/v1/catalog/items/A-1"))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.bytes().await.unwrap().len(), 200);
        let other = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
        assert_eq!(other.status().as_u16(), 404, "one route only");
        server.abort();
    }
}
