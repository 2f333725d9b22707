//! The middleware every Surge HTTP service runs behind, and its health endpoint.
//!
//! Request ids (`x-request-id`, made when missing and echoed back), a trace span per request
//! carrying that id, a body size limit, and panics turned into an opaque 500 problem (logged)
//! instead of a dropped connection.

use crate::Problem;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderName, HeaderValue, Request};
use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn panic_to_problem(err: Box<dyn Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = msg, "handler panicked");
    Problem::internal().into_response()
}

/// Counts and times every request by route template (not raw path: bounded labels).
async fn track(req: axum::extract::Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // A method label from a fixed set: a client's made-up method is "other", not a new series.
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("surge_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("surge_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    res
}

/// `GET /metrics`: Prometheus text of this process.
pub async fn metrics_text() -> String {
    crate::telemetry::prometheus().render()
}

/// Browser origins allowed to call an API (CORS); empty: no cross-origin access.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .map(|o| o.trim())
        // A blank entry (`--cors-origins ""`) allows no origin: no CORS layer at all then, as the
        // query API's cached-read fast path, which answers without one, assumes.
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if allowed.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([http::Method::GET, http::Method::POST])
            .allow_headers([
                http::header::CONTENT_TYPE,
                http::header::AUTHORIZATION,
                http::header::IF_NONE_MATCH,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-consistency-token"),
            ])
            .expose_headers([
                http::header::ETAG,
                http::header::LOCATION,
                http::header::RETRY_AFTER,
                HeaderName::from_static("x-consistency-token"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Wraps a service's routes in the shared middleware stack (request ids, traces, metrics,
/// body limit, panics to 500 problems, security headers, CORS for `cors_origins`), and adds
/// `/metrics`.
pub fn with_service_layers(router: Router, body_limit: usize, cors_origins: &[String]) -> Router {
    crate::telemetry::prometheus();
    let security = [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ];
    let mut router = router
        .route_layer(middleware::from_fn(track))
        .route("/metrics", get(metrics_text));
    for (name, value) in security {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    if let Some(cors) = cors(cors_origins) {
        router = router.layer(cors);
    }
    router
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(panic_to_problem))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let request_id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> &'static str {
    "ok"
}

/// A readiness check: `Err(reason)` while the process should not get traffic.
pub type Readiness = std::sync::Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// `GET /readyz` answer for a readiness check.
pub async fn readyz(check: &Readiness) -> Response {
    match check().await {
        Ok(()) => (http::StatusCode::OK, "ready").into_response(),
        Err(reason) => Problem::unavailable(reason, 2).into_response(),
    }
}

/// The admin endpoints of a worker without an API of its own (relay, projector):
/// `/healthz`, `/readyz`, `/metrics`. Serves until `shutdown`.
pub async fn serve_admin(
    addr: SocketAddr,
    ready: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::StartupError> {
    let listener = crate::startup::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr().map_or(addr, |a| a), "admin endpoints listening");
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(move || async move { readyz(&ready).await }));
    let router = with_service_layers(router, 1024, &[]);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| crate::StartupError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Adds the two ways of authenticating (bearer JWT, `X-Api-Key`) to an OpenAPI document.
pub struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(crate::auth::API_KEY_HEADER))),
        );
    }
}

/// An OpenAPI document as JSON spelled the way the specification spells it. utoipa 5.5 writes
/// the fields of a Link object in snake case (`operation_id`, `operation_ref`, `request_body`),
/// which no OpenAPI tool reads (schemathesis calls such a link one without a target); they are
/// renamed to `operationId`, `operationRef` and `requestBody` here, where both APIs serve
/// their documents.
pub fn openapi_json(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(doc).unwrap_or_default();
    let responses = json["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| {
            operation
                .get_mut("responses")
                .and_then(serde_json::Value::as_object_mut)
        })
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let links = response.get_mut("links").and_then(serde_json::Value::as_object_mut);
        for link in links.into_iter().flat_map(|links| links.values_mut()) {
            let Some(link) = link.as_object_mut() else { continue };
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_string(), value);
                }
            }
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::link::LinkBuilder;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::{OpenApiBuilder, ResponsesBuilder};

    #[test]
    fn links_are_spelled_as_the_specification_spells_them() {
        let link = LinkBuilder::new()
            .operation_id("cancel_order")
            .parameter("order_id", "$response.body#/order_id")
            .request_body(Some(serde_json::json!({"reason": "x"})))
            .build();
        let response = ResponseBuilder::new()
            .description("placed")
            .link("Cancel", link)
            .build();
        let operation = OperationBuilder::new()
            .responses(ResponsesBuilder::new().response("202", response).build())
            .build();
        let doc = OpenApiBuilder::new()
            .paths(PathsBuilder::new().path("/v1/orders", PathItem::new(HttpMethod::Post, operation)))
            .build();
        let json = super::openapi_json(&doc);
        let link = &json["paths"]["/v1/orders"]["post"]["responses"]["202"]["links"]["Cancel"];
        assert_eq!(
            link,
            &serde_json::json!({
                "operationId": "cancel_order",
                "parameters": {"order_id": "$response.body#/order_id"},
                "requestBody": {"reason": "x"},
            })
        );
    }
}
