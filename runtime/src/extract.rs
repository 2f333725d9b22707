//! Axum extractors whose rejections are problem+json, so malformed input never gets a bare
//! text error: `Body<T>` (JSON), `Params<T>` (query string), `PathParam<T>` (path); and what
//! they read exactly as the OpenAPI documents say: [`integer`] body fields, [`OrderIdParam`]
//! path segments.

use crate::Problem;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::Json;
use http::request::Parts;
use http::StatusCode;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Deserialize;
use surge_events::OrderId;

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

/// `deserialize_with` for an `i64` body field: an integer, or a float without a fraction
/// (`10000.0`, `1e4`), which JSON Schema's `integer` includes and some clients send. A fraction
/// (`10000.5`) or a value outside `i64` is refused like any wrong type (400 `invalid-body`).
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Integer;

    impl de::Visitor<'_> for Integer {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"an integer within i64"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            // i64's range as floats: [-2^63, 2^63); both bounds are exact in f64.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                Ok(v as i64)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
    }

    d.deserialize_any(Integer)
}

/// An order id in a path, in the one form the documents give (`format: uuid`, 8-4-4-4-12 hex
/// digits); the unhyphenated, braced and URN forms the uuid crate would also read are refused,
/// so that a client reading the document and the server agree on every id.
#[derive(Debug, Clone, Copy)]
pub struct OrderIdParam(pub OrderId);

impl<'de> Deserialize<'de> for OrderIdParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // 36 characters is the hyphenated form and only it.
        match s.parse() {
            Ok(id) if s.len() == 36 => Ok(OrderIdParam(OrderId(id))),
            _ => Err(de::Error::custom("order id must be a UUID as 8-4-4-4-12 hex digits")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{integer, OrderIdParam};
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Line {
        #[serde(deserialize_with = "integer")]
        quantity: i64,
    }

    fn quantity(json: &str) -> Result<i64, String> {
        serde_json::from_str::<Line>(json)
            .map(|l| l.quantity)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_may_come_as_integral_floats_but_never_with_a_fraction() {
        assert_eq!(quantity(r#"{"quantity": 2}"#), Ok(2));
        assert_eq!(quantity(r#"{"quantity": -2}"#), Ok(-2));
        assert_eq!(quantity(r#"{"quantity": 10000.0}"#), Ok(10_000));
        assert_eq!(quantity(r#"{"quantity": 1e4}"#), Ok(10_000));
        assert_eq!(quantity(r#"{"quantity": -0.0}"#), Ok(0));
        assert_eq!(quantity(r#"{"quantity": 9223372036854775807}"#), Ok(i64::MAX));
        assert_eq!(quantity(r#"{"quantity": -9223372036854775808}"#), Ok(i64::MIN));
        for refused in [
            r#"{"quantity": 2.5}"#,
            r#"{"quantity": 9223372036854775808}"#,
            r#"{"quantity": 9223372036854775808.0}"#,
            r#"{"quantity": 1e300}"#,
            r#"{"quantity": "2"}"#,
            r#"{"quantity": null}"#,
        ] {
            assert!(quantity(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn order_ids_in_paths_are_hyphenated_uuids_only() {
        let id = "0190a5b2-7c1d-7e3f-8a4b-5c6d7e8f9a0b";
        let parse = |s: &str| serde_json::from_value::<OrderIdParam>(serde_json::json!(s)).map(|p| p.0 .0.to_string());
        assert_eq!(parse(id).unwrap(), id);
        assert_eq!(parse(&id.to_uppercase()).unwrap(), id);
        for refused in [
            "0190a5b27c1d7e3f8a4b5c6d7e8f9a0b",
            "{0190a5b2-7c1d-7e3f-8a4b-5c6d7e8f9a0b}",
            "urn:uuid:0190a5b2-7c1d-7e3f-8a4b-5c6d7e8f9a0b",
            "0190a5b2-7c1d-7e3f-8a4b-5c6d7e8f9a0",
            "",
        ] {
            assert!(parse(refused).is_err(), "{refused}");
        }
    }
}
