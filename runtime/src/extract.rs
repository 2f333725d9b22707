//! Axum extractors whose rejections are problem+json, so malformed input never gets a bare
//! text error: `Body<T>` (JSON), `Params<T>` (query string), `PathParam<T>` (path).

use crate::Problem;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::Json;
use http::request::Parts;
use http::StatusCode;
use serde::de::DeserializeOwned;

/// A JSON request body; unknown fields, wrong types and bad syntax answer 400 problem+json.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("send the body as application/json"),
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
        )
        .detail(b.body_text()),
        JsonRejection::JsonDataError(e) => {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-body", "Invalid request body").detail(error_chain(&e))
        }
        other => Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON").detail(other.body_text()),
    }
}

/// serde's message (the innermost source) says which field was wrong and why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    msg
}

/// Query-string parameters; a bad one answers 400 problem+json.
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(
                    Problem::new(StatusCode::BAD_REQUEST, "invalid-query", "Invalid query parameters")
                        .detail(error_chain(&e)),
                )
            }
            Err(e) => Err(
                Problem::new(StatusCode::BAD_REQUEST, "invalid-query", "Invalid query parameters")
                    .detail(e.body_text()),
            ),
        }
    }
}

/// Path parameters; a bad one (not a UUID, an invalid SKU) answers 400 problem+json.
pub struct PathParam<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParam(v)),
            Err(e @ PathRejection::FailedToDeserializePathParams(_)) => {
                Err(
                    Problem::new(StatusCode::BAD_REQUEST, "invalid-path", "Invalid path parameter")
                        .detail(error_chain(&e)),
                )
            }
            Err(e) => Err(
                Problem::new(StatusCode::BAD_REQUEST, "invalid-path", "Invalid path parameter").detail(e.body_text()),
            ),
        }
    }
}
