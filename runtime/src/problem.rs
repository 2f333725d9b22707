//! RFC 9457 problem details: the one shape of every error answer of both HTTP APIs.
//!
//! `type` is a stable URI per kind of problem (`https://surge.dev/problems/<slug>`), so
//! clients can branch on it; `detail` says what was wrong with this request.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

pub const TYPE_BASE: &str = "https://surge.dev/problems/";

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem of kind `slug` (the last segment of its `type`).
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Problem {
            type_uri: format!("{TYPE_BASE}{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: None,
            extensions: Map::new(),
            retry_after_secs: None,
        }
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-request", "The request is not valid").detail(detail)
    }
    /// 401: no credentials, or credentials that do not check out.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required").detail(detail)
    }
    /// 403: the caller is known but may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "No such resource").detail(detail)
    }
    /// The opaque answer to a failure of ours; the cause is logged, never sent.
    pub fn internal() -> Self {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            .detail("The server could not handle the request; it has been logged.")
    }
    /// The answer to a database failure: 503 when the pool is exhausted or the database is
    /// unreachable (worth a retry), otherwise an opaque 500. The cause is logged here, once.
    pub fn database(e: &sqlx::Error) -> Self {
        match e {
            // Class 22 (data exception: a NUL byte, a value out of range) comes from what the
            // request carried: a 400, even where validation in front missed it.
            sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")) => {
                tracing::warn!(error = %e, "database refused a value of the request");
                Problem::bad_request(
                    "a value in the request cannot be used (for example a NUL byte or a number out of range)",
                )
            }
            e if crate::db::is_unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                Problem::unavailable("the database is busy or unreachable; retry shortly", 1)
            }
            _ => {
                tracing::error!(error = %e, "database error");
                Problem::internal()
            }
        }
    }

    /// 504: the request may have taken effect. The database failed while committing it and
    /// could not be asked in time whether the commit took. Unlike `unavailable` this is no
    /// invitation to retry (no Retry-After): a blind retry can do it twice. `check` is the
    /// path (on the query API) that shows whether it did.
    pub fn outcome_unknown(check: &str) -> Self {
        Problem::new(StatusCode::GATEWAY_TIMEOUT, "outcome-unknown", "Outcome unknown")
            .detail(format!(
                "The request may have taken effect: the database failed while committing it and could not be \
                 asked whether it did. Read {check} to find out before sending it again; a retry with the same \
                 Idempotency-Key is always safe."
            ))
            .with("check", check)
    }

    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
            .detail(detail)
            .retry_after(retry_after_secs)
    }
}

/// How a [`Problem`] looks in the OpenAPI documents of both APIs.
#[derive(utoipa::ToSchema)]
#[schema(as = ProblemDoc)]
#[allow(dead_code)]
pub struct ProblemDoc {
    /// Stable URI of the kind of problem; branch on it.
    #[schema(rename = "type", example = "https://surge.dev/problems/out-of-stock")]
    type_uri: String,
    title: String,
    status: u16,
    detail: Option<String>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}
