//! The hot read, answered before the middleware: `GET /v1/catalog/items/{sku}` of an item in
//! the cache, by an anonymous shopper, without a consistency token.
//!
//! Such a read needs none of what the shared middleware stack does per request (no
//! credentials to check, no body, no parameters, nothing that may fail or log), and that stack
//! costs several times the cache hit itself. So the outermost layer of the query API answers
//! it from the cached entry's ready-made parts, with everything the full path sends: the
//! ETag and `304 Not Modified` for `If-None-Match`, `Cache-Control`, `X-Cache`,
//! `X-Data-Age-Ms`, the security headers, the request id (echoed, or a new one), the body in
//! the encoding `CompressionLayer` would choose (compressed once per entry, see
//! [`crate::encoding`]) with its `Vary`, and the same `surge_http_requests_total` /
//! `surge_http_request_duration_seconds` / `surge_cache_requests_total` series, through
//! handles registered once. Anything else (a miss, credentials, a query string, a token, HEAD,
//! a malformed `Accept-Encoding`) goes down the full stack unchanged. It is installed only
//! without CORS origins (a cross-origin answer needs the CORS layer's headers).

use crate::api::{data_age_ms, etag_matches, CONSISTENCY_TOKEN, ITEM_CACHE_CONTROL};
use crate::cache::ViewCache;
use crate::encoding::{self, Encoding};
use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::FutureExt;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use surge_runtime::auth::API_KEY_HEADER;
use surge_runtime::http::REQUEST_ID;

const ITEM_PREFIX: &str = "/v1/catalog/items/";
/// The route template the full path's metrics carry.
const ITEM_ROUTE: &str = "/v1/catalog/items/{sku}";

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const X_DATA_AGE_MS: HeaderName = HeaderName::from_static("x-data-age-ms");

/// What `surge_runtime::http::with_service_layers` sets on every answer.
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 4] = [
    (
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ),
    (
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    ),
    (
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    ),
    (
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    ),
];

/// The state of the layer: the items' cache, request ids, the metrics' handles.
pub struct CatalogHits {
    items: ViewCache,
    /// Request ids are UUIDs (version 4 layout): 60 random bits per process, then a counter;
    /// unique without asking the kernel for randomness per request.
    id_prefix: u64,
    id_counter: AtomicU64,
    answered_200: metrics::Counter,
    answered_304: metrics::Counter,
    duration: metrics::Histogram,
}

impl CatalogHits {
    pub fn new(items: ViewCache) -> Self {
        let random = uuid::Uuid::new_v4().as_u64_pair().0;
        let requests = |status: &'static str| metrics::counter!("surge_http_requests_total", "route" => ITEM_ROUTE, "method" => "GET", "status" => status);
        CatalogHits {
            items,
            id_prefix: (random & !0xF000) | 0x4000,
            id_counter: AtomicU64::new(0),
            answered_200: requests("200"),
            answered_304: requests("304"),
            duration: metrics::histogram!("surge_http_request_duration_seconds", "route" => ITEM_ROUTE, "method" => "GET"),
        }
    }

    /// The SKU of a request this layer may answer, before looking at the cache.
    fn sku(req: &Parts) -> Option<&str> {
        if req.method != Method::GET || req.uri.query().is_some() {
            return None;
        }
        let h = &req.headers;
        if h.contains_key(header::AUTHORIZATION) || h.contains_key(API_KEY_HEADER) || h.contains_key(CONSISTENCY_TOKEN)
        {
            return None;
        }
        // Any key the cache holds came through the full path's SKU validation.
        let sku = req.uri.path().strip_prefix(ITEM_PREFIX)?;
        (!sku.is_empty() && !sku.contains('/')).then_some(sku)
    }

    fn request_id(&self, req: &Parts) -> HeaderValue {
        if let Some(id) = req.headers.get(REQUEST_ID) {
            return id.clone();
        }
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let id = uuid::Uuid::from_u64_pair(self.id_prefix, (n & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000);
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }

    /// The answer to `req` from the cache, or `None`: the full stack answers.
    pub async fn answer(&self, req: &Parts) -> Option<Response> {
        let started = Instant::now();
        let sku = Self::sku(req)?;
        let encoding = encoding::preferred(&req.headers)?;
        let view = self.items.peek(sku).await?;
        let not_modified = etag_matches(&req.headers, &view.etag);
        let mut res = if not_modified {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let compressible = view.body.len() >= encoding::COMPRESS_FROM_BYTES;
            let encoding = if compressible { encoding } else { Encoding::Identity };
            let mut r = Response::new(Body::from(view.compressed.get(encoding, &view.body)));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if compressible {
                h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            }
            if encoding != Encoding::Identity {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.as_str()));
            }
            r
        };
        let h = res.headers_mut();
        h.reserve(16);
        h.insert(header::ETAG, view.etag_header.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(ITEM_CACHE_CONTROL));
        h.insert(X_CACHE, HeaderValue::from_static("hit"));
        h.insert(X_DATA_AGE_MS, HeaderValue::from(data_age_ms(view.updated_at)));
        for (name, value) in SECURITY_HEADERS {
            h.insert(name, value);
        }
        h.insert(REQUEST_ID, self.request_id(req));
        if not_modified {
            self.answered_304.increment(1);
        } else {
            self.answered_200.increment(1);
        }
        self.duration.record(started.elapsed().as_secs_f64());
        Some(res)
    }
}

/// The layer that puts [`CatalogHits`] in front of the query API's routes.
#[derive(Clone)]
pub struct CatalogHitsLayer(Arc<CatalogHits>);

impl CatalogHitsLayer {
    pub fn new(items: ViewCache) -> Self {
        CatalogHitsLayer(Arc::new(CatalogHits::new(items)))
    }
}

impl<S> tower::Layer<S> for CatalogHitsLayer {
    type Service = CatalogHitsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CatalogHitsService {
            inner,
            hits: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CatalogHitsService<S> {
    inner: S,
    hits: Arc<CatalogHits>,
}

impl<S> tower::Service<Request> for CatalogHitsService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (parts, body) = req.into_parts();
        // A cache lookup completes without waiting (a moka read only queues its bookkeeping);
        // were it ever to wait, the full stack answers. Answering here, synchronously, spares
        // cloning the whole inner stack per request, which an asynchronous answer would need.
        let answered = CatalogHits::sku(&parts)
            .is_some()
            .then(|| self.hits.answer(&parts).now_or_never().flatten())
            .flatten();
        match answered {
            Some(res) => Box::pin(std::future::ready(Ok(res))),
            None => Box::pin(self.inner.call(Request::from_parts(parts, body))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{full_stack, service_router};
    use crate::cache::CachedView;
    use crate::context::{ConsistencyMode, ConsoleContext, QueryContext};
    use axum::http::HeaderMap;
    use axum::Router;
    use bytes::Bytes;
    use std::io::Read;
    use std::time::Duration;
    use surge_runtime::{AuthConfig, DatabaseConfig, KafkaConfig};
    use tower::ServiceExt;

    /// The real query API's router with and without this layer, over one cache holding item
    /// `A-1` at version 3. The pool never connects: a cache hit does not touch it.
    async fn routers() -> (Router, Router, Arc<CatalogHits>) {
        let items = ViewCache::new("items", 100, Duration::from_secs(60), true);
        let body = serde_json::json!({"sku": "A-1", "name": "Item A-1", "category": "load",
            "price": {"minor": 1999, "currency": "EUR"}, "available": 5, "version": 3});
        let view = CachedView::new(Bytes::from(body.to_string()), None, 3, 3, chrono::Utc::now());
        items.get_or_load("A-1", || async { Ok(Some(view)) }).await.unwrap();
        let db = DatabaseConfig::new("postgres://surge:surge@127.0.0.1:1/none");
        let auth = AuthConfig::hs256("catalog-hits-test-secret-0123456789abcdef")
            .build()
            .unwrap();
        let ctx = QueryContext {
            pool: sqlx::postgres::PgPoolOptions::new()
                .acquire_timeout(Duration::from_millis(200))
                .connect_lazy("postgres://surge:surge@127.0.0.1:1/none")
                .unwrap(),
            items: items.clone(),
            orders: ViewCache::new("orders", 100, Duration::from_secs(60), true),
            consistency_wait: Duration::from_millis(100),
            consistency_mode: ConsistencyMode::Fail,
            console: ConsoleContext::new(auth.clone(), Vec::new(), db, KafkaConfig::new("127.0.0.1:1", "")),
        };
        let fast = service_router(ctx.clone(), auth.clone(), 16 * 1024, &[]);
        let full = full_stack(ctx, auth, 16 * 1024, &[]);
        (fast, full, Arc::new(CatalogHits::new(items)))
    }

    fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    async fn call(router: &Router, req: Request) -> (StatusCode, HeaderMap, Vec<u8>) {
        let res = router.clone().oneshot(req).await.unwrap();
        let (mut parts, body) = res.into_parts();
        // Which path answered: a body compressed in front has its exact size; one compressed
        // by the layer is a stream. Noted in a header the comparison leaves out.
        if parts.headers.contains_key(header::CONTENT_ENCODING) {
            let exact = axum::body::HttpBody::size_hint(&body).exact().is_some();
            parts.headers.insert(
                "content-length",
                HeaderValue::from_static(if exact { "exact" } else { "stream" }),
            );
        }
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let mut plain = Vec::new();
        match parts.headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap()) {
            Some("gzip") => {
                flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain).unwrap();
            }
            Some("br") => {
                brotli::Decompressor::new(&body[..], 4096)
                    .read_to_end(&mut plain)
                    .unwrap();
            }
            Some(other) => panic!("unexpected encoding {other}"),
            None => plain = body.to_vec(),
        }
        (parts.status, parts.headers, plain)
    }

    /// Header names and values, without those that differ per answer or per transport.
    fn comparable(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = h
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "x-data-age-ms" | "content-length" | "x-request-id"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_hit_is_answered_in_front_exactly_as_the_full_stack_answers_it() {
        let (fast, full, hits) = routers().await;
        let cases: [&[(&str, &str)]; 9] = [
            &[],
            &[("accept-encoding", "gzip")],
            &[("accept-encoding", "gzip, deflate, br, zstd")],
            &[("accept-encoding", "br;q=0.2, gzip;q=0.8")],
            &[("if-none-match", "\"v3\"")],
            &[("if-none-match", "\"v1\", \"v3\""), ("accept-encoding", "gzip")],
            &[("if-none-match", "*")],
            &[("if-none-match", "\"v2\""), ("accept-encoding", "br")],
            &[("x-request-id", "req-42"), ("cookie", "surge_session=nonsense")],
        ];
        for headers in cases {
            let uri = "/v1/catalog/items/A-1";
            let (parts, _) = request(Method::GET, uri, headers).into_parts();
            assert!(hits.answer(&parts).await.is_some(), "{headers:?}: answered in front");
            let (s1, h1, b1) = call(&fast, request(Method::GET, uri, headers)).await;
            let (s2, h2, b2) = call(&full, request(Method::GET, uri, headers)).await;
            assert_eq!(s1, s2, "{headers:?}");
            assert_eq!(comparable(&h1), comparable(&h2), "{headers:?}");
            assert_eq!(b1, b2, "{headers:?}");
            assert_eq!(h1["x-cache"], "hit");
            if h1.contains_key(header::CONTENT_ENCODING) {
                assert_eq!(h1["content-length"], "exact", "{headers:?}: compressed in front");
                assert_eq!(h2["content-length"], "stream", "{headers:?}: compressed by the layer");
            }
            assert_eq!(h1["etag"], "\"v3\"");
            assert!(h1["x-data-age-ms"].to_str().unwrap().parse::<i64>().unwrap() >= 0);
            assert!(h1.contains_key("x-request-id") && h2.contains_key("x-request-id"));
            if s1 == StatusCode::NOT_MODIFIED {
                assert!(b1.is_empty());
            } else {
                assert_eq!(serde_json::from_slice::<serde_json::Value>(&b1).unwrap()["sku"], "A-1");
            }
        }
        let (_, h, _) = call(
            &fast,
            request(Method::GET, "/v1/catalog/items/A-1", &[("x-request-id", "req-42")]),
        )
        .await;
        assert_eq!(h["x-request-id"], "req-42", "a caller's request id is echoed");
    }

    #[tokio::test]
    async fn anything_but_a_plain_anonymous_hit_goes_down_the_full_stack() {
        let (fast, full, hits) = routers().await;
        type Case<'a> = (Method, &'a str, &'a [(&'a str, &'a str)]);
        let declined: [Case; 8] = [
            (Method::GET, "/v1/catalog/items/B-9", &[]),
            (Method::HEAD, "/v1/catalog/items/A-1", &[]),
            (Method::GET, "/v1/catalog/items/A-1?after=1", &[]),
            (
                Method::GET,
                "/v1/catalog/items/A-1",
                &[("authorization", "Bearer nonsense")],
            ),
            (Method::GET, "/v1/catalog/items/A-1", &[("x-api-key", "nonsense")]),
            (Method::GET, "/v1/catalog/items/A-1", &[("x-consistency-token", "abc")]),
            (Method::GET, "/v1/catalog/items/A-1", &[("accept-encoding", "gzip;q=7")]),
            (Method::GET, "/v1/catalog/items/A-1/x", &[]),
        ];
        for (method, uri, headers) in &declined {
            let (parts, _) = request(method.clone(), uri, headers).into_parts();
            assert!(hits.answer(&parts).await.is_none(), "{method} {uri} {headers:?}");
        }
        // What the full stack says to those it can answer without the database: the same
        // through both routers (bad credentials are still a 401, a bad token a 400).
        for (method, uri, headers) in &declined[3..] {
            let (s1, h1, _) = call(&fast, request(method.clone(), uri, headers)).await;
            let (s2, h2, _) = call(&full, request(method.clone(), uri, headers)).await;
            assert_eq!(s1, s2, "{uri} {headers:?}");
            assert_eq!(comparable(&h1), comparable(&h2), "{uri} {headers:?}");
        }
        let (s, _, _) = call(
            &fast,
            request(
                Method::GET,
                "/v1/catalog/items/A-1",
                &[("authorization", "Bearer nonsense")],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _, _) = call(&fast, request(Method::GET, "/healthz", &[])).await;
        assert_eq!(s, StatusCode::OK, "other routes are untouched");
    }

    #[tokio::test]
    async fn new_request_ids_are_distinct_uuids() {
        let (_, _, hits) = routers().await;
        let (parts, _) = request(Method::GET, "/v1/catalog/items/A-1", &[]).into_parts();
        let a = hits.request_id(&parts);
        let b = hits.request_id(&parts);
        assert_ne!(a, b);
        for id in [a, b] {
            let id = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(id.get_version_num(), 4);
        }
    }
}
