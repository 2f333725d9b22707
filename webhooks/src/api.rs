//! The registration API, served by the command API (`surge command-api` merges [`routes`] and
//! [`WebhooksDoc`]): register an endpoint (its secret shown once), list, show, pause, resume,
//! delete, list its deliveries, redeliver a dead one. Callers need the `service` or `admin`
//! role; endpoints belong to the deployment, not to the caller who registered them.

use crate::address::{check_url, UrlPolicy, UrlRefused};
use crate::notification::EventType;
use crate::signature::new_secret;
use crate::tables::{self, Delivery, DeliveryState, Endpoint, EndpointState, NewEndpoint, Redelivery};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use surge_runtime::extract::{Body, Params, PathParam};
use surge_runtime::problem::ProblemDoc;
use surge_runtime::{Principal, Problem, Role};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

/// What the handlers share: the database and the policy registrations are checked against.
#[derive(Clone)]
pub struct WebhooksApi {
    pool: PgPool,
    policy: Arc<UrlPolicy>,
}

impl WebhooksApi {
    pub fn new(pool: PgPool, policy: UrlPolicy) -> Self {
        WebhooksApi {
            pool,
            policy: Arc::new(policy),
        }
    }
}

/// The routes, for any outer state (they carry their own). The caller puts them behind its
/// authentication layer: every handler asks for a [`Principal`].
pub fn routes<S: Clone + Send + Sync + 'static>(api: WebhooksApi) -> Router<S> {
    Router::new()
        .route("/v1/webhooks", post(register_webhook).get(list_webhooks))
        .route("/v1/webhooks/{webhook_id}", get(show_webhook).delete(delete_webhook))
        .route("/v1/webhooks/{webhook_id}/pause", post(pause_webhook))
        .route("/v1/webhooks/{webhook_id}/resume", post(resume_webhook))
        .route("/v1/webhooks/{webhook_id}/deliveries", get(list_deliveries))
        .route(
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            post(redeliver_delivery),
        )
        .with_state(api)
}

/// The contract of these routes; as a [`utoipa::Modify`] it adds them to another document.
#[derive(OpenApi)]
#[openapi(
    paths(
        register_webhook,
        list_webhooks,
        show_webhook,
        delete_webhook,
        pause_webhook,
        resume_webhook,
        list_deliveries,
        redeliver_delivery
    ),
    components(schemas(
        ProblemDoc,
        EventType,
        EndpointState,
        Endpoint,
        RegisterWebhook,
        RegisteredWebhook,
        WebhookList,
        DeliveryState,
        Delivery,
        DeliveryPage
    ))
)]
pub struct WebhooksDoc;

impl utoipa::Modify for WebhooksDoc {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.merge(WebhooksDoc::openapi());
    }
}

/// An id in a path or query, as the document gives it: a hyphenated UUID and nothing else.
#[derive(Debug, Clone, Copy)]
pub struct IdParam(pub Uuid);

impl<'de> Deserialize<'de> for IdParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse() {
            Ok(id) if s.len() == 36 => Ok(IdParam(id)),
            _ => Err(serde::de::Error::custom("ids are UUIDs as 8-4-4-4-12 hex digits")),
        }
    }
}

/// The error answer of these routes: a problem; database failures are logged once.
pub struct ApiError(Problem);

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError(p)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError(Problem::database(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn may_manage(caller: &Principal) -> Result<(), Problem> {
    caller.require(&[Role::Service, Role::Admin])
}

fn no_endpoint(id: Uuid) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "webhook-not-found", "No such webhook").detail(format!("no webhook {id}"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterWebhook {
    /// Where changes are POSTed: an absolute https URL in visible ASCII (http only where config
    /// allows it; international names as punycode), on a public address (private, loopback
    /// and other special ranges only where config allows them).
    #[schema(
        min_length = 10,
        max_length = 2048,
        pattern = "^https?://[!-~]+$",
        example = "https://shop.example.com/hooks/surge"
    )]
    pub url: String,
    /// The changes to send (a type listed twice counts once).
    #[schema(min_items = 1, max_items = 6)]
    pub event_types: Vec<EventType>,
}

/// A registered endpoint with its signing secret: the one answer that shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredWebhook {
    pub id: Uuid,
    pub url: String,
    pub event_types: Vec<EventType>,
    pub state: EndpointState,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Verifies `Surge-Signature` on every delivery. Shown now and never again: store it.
    #[schema(example = "whsec_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")]
    pub secret: String,
}

fn refused(e: &UrlRefused) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "webhook-url-refused",
        "Webhook URL refused",
    )
    .detail(e.to_string())
}

/// Register an endpoint for order status changes (service, admin). Only changes after the
/// registration are sent.
#[utoipa::path(post, path = "/v1/webhooks", request_body = RegisterWebhook,
    responses((status = 201, body = RegisteredWebhook, description = "registered; the secret is shown only here; Location names the endpoint",
               links(
                   ("ShowWebhook" = (operation_id = "show_webhook", parameters(("webhook_id" = "$response.body#/id")),
                                     description = "the endpoint just registered")),
                   ("PauseWebhook" = (operation_id = "pause_webhook", parameters(("webhook_id" = "$response.body#/id")),
                                      description = "pause the endpoint just registered")),
                   ("ResumeWebhook" = (operation_id = "resume_webhook", parameters(("webhook_id" = "$response.body#/id")),
                                       description = "resume the endpoint just registered")),
                   ("ListDeliveries" = (operation_id = "list_deliveries", parameters(("webhook_id" = "$response.body#/id")),
                                        description = "what is owed to the endpoint just registered")),
                   ("DeleteWebhook" = (operation_id = "delete_webhook", parameters(("webhook_id" = "$response.body#/id")),
                                       description = "delete the endpoint just registered"))
               )),
              (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 413, body = ProblemDoc, content_type = "application/problem+json"), (status = 415, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 422, body = ProblemDoc, content_type = "application/problem+json", description = "`webhook-url-refused`: not https, credentials in it, unresolvable, or a private/loopback/special address")))]
#[tracing::instrument(skip_all)]
pub async fn register_webhook(
    caller: Principal,
    State(api): State<WebhooksApi>,
    Body(req): Body<RegisterWebhook>,
) -> ApiResult {
    may_manage(&caller)?;
    if req.event_types.is_empty() || req.event_types.len() > EventType::ALL.len() {
        return Err(
            Problem::new(StatusCode::BAD_REQUEST, "invalid-body", "Invalid request body")
                .detail("event_types must list 1 to 6 event types")
                .into(),
        );
    }
    let mut event_types = req.event_types.clone();
    event_types.sort();
    event_types.dedup();
    let url = check_url(&req.url, &api.policy).await.map_err(|e| {
        metrics::counter!("surge_webhook_registrations_refused_total").increment(1);
        refused(&e)
    })?;
    // Only what happens from now on is owed to the endpoint: everything at or below a safe
    // position is already visible, so nothing committed later can fall below it.
    let after_position = safe_position(&api).await?;
    let secret = new_secret();
    let endpoint = tables::insert_endpoint(
        &api.pool,
        &NewEndpoint {
            url: url.as_str(),
            event_types: &event_types,
            secret: &secret,
            after_position,
            created_by: &caller.actor(),
        },
    )
    .await?;
    tracing::info!(webhook_id = %endpoint.id, url = %endpoint.url, "webhook registered");
    let location = HeaderValue::from_str(&format!("/v1/webhooks/{}", endpoint.id)).map_err(|_| Problem::internal())?;
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        Json(RegisteredWebhook {
            id: endpoint.id,
            url: endpoint.url,
            event_types: endpoint.event_types,
            state: endpoint.state,
            created_by: endpoint.created_by,
            created_at: endpoint.created_at,
            secret,
        }),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<Endpoint>,
}

/// List the registered endpoints (service, admin); secrets are never shown.
#[utoipa::path(get, path = "/v1/webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all)]
pub async fn list_webhooks(caller: Principal, State(api): State<WebhooksApi>) -> ApiResult {
    may_manage(&caller)?;
    let items = tables::list_endpoints(&api.pool).await?;
    Ok(Json(WebhookList { items }).into_response())
}

/// Show one endpoint (service, admin), without its secret.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}",
    params(("webhook_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")),
    responses((status = 200, body = Endpoint), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(webhook_id = %id.0))]
pub async fn show_webhook(
    caller: Principal,
    State(api): State<WebhooksApi>,
    PathParam(id): PathParam<IdParam>,
) -> ApiResult {
    may_manage(&caller)?;
    let endpoint = tables::get_endpoint(&api.pool, id.0)
        .await?
        .ok_or_else(|| no_endpoint(id.0))?;
    Ok(Json(endpoint).into_response())
}

/// Delete an endpoint and every delivery owed to it (service, admin).
#[utoipa::path(delete, path = "/v1/webhooks/{webhook_id}",
    params(("webhook_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")),
    responses((status = 204, description = "deleted"), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(webhook_id = %id.0))]
pub async fn delete_webhook(
    caller: Principal,
    State(api): State<WebhooksApi>,
    PathParam(id): PathParam<IdParam>,
) -> ApiResult {
    may_manage(&caller)?;
    if !tables::delete_endpoint(&api.pool, id.0).await? {
        return Err(no_endpoint(id.0).into());
    }
    tracing::info!("webhook deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A safe position of the log (everything at or below it is visible; nothing committed later
/// can fall below it), or a 503 when the store is too busy to give one.
async fn safe_position(api: &WebhooksApi) -> Result<i64, ApiError> {
    let mut conn = api.pool.acquire().await?;
    surge_store::safe_position(&mut conn, Duration::from_secs(5))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "no safe position of the log for a webhook change");
            Problem::unavailable("the event store is busy; retry shortly", 1).into()
        })
}

async fn set_state(caller: &Principal, api: &WebhooksApi, id: Uuid, state: EndpointState) -> ApiResult {
    may_manage(caller)?;
    // The change takes effect at a log position, not at whatever event the fan-out is on: what
    // was committed before a pause is still owed, what is committed after a resume is owed.
    let at = safe_position(api).await?;
    let endpoint = match state {
        EndpointState::Paused => tables::pause(&api.pool, id, at).await?,
        EndpointState::Active => tables::resume(&api.pool, id, at).await?,
    }
    .ok_or_else(|| no_endpoint(id))?;
    tracing::info!(state = ?endpoint.state, at, "webhook state set");
    Ok(Json(endpoint).into_response())
}

/// Pause an endpoint (service, admin): changes from now until it is resumed are not sent to
/// it; changes committed before (queued already or not yet) wait until it is resumed.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/pause",
    params(("webhook_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")),
    responses((status = 200, body = Endpoint), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(webhook_id = %id.0))]
pub async fn pause_webhook(
    caller: Principal,
    State(api): State<WebhooksApi>,
    PathParam(id): PathParam<IdParam>,
) -> ApiResult {
    set_state(&caller, &api, id.0, EndpointState::Paused).await
}

/// Resume a paused endpoint (service, admin).
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/resume",
    params(("webhook_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")),
    responses((status = 200, body = Endpoint), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(webhook_id = %id.0))]
pub async fn resume_webhook(
    caller: Principal,
    State(api): State<WebhooksApi>,
    PathParam(id): PathParam<IdParam>,
) -> ApiResult {
    set_state(&caller, &api, id.0, EndpointState::Active).await
}

pub const MAX_PAGE_SIZE: i64 = 200;
const DEFAULT_PAGE_SIZE: i64 = 50;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesParams {
    /// Only deliveries in this state.
    pub state: Option<DeliveryState>,
    /// `next_after` of the previous page.
    #[param(value_type = Option<uuid::Uuid>, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")]
    pub after: Option<IdParam>,
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// A page of deliveries, oldest first; pass `next_after` as `after` for the next one.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<Delivery>,
    pub next_after: Option<Uuid>,
}

/// An endpoint's deliveries, oldest first, a page at a time (service, admin); `state=dead`
/// lists what waits for a redelivery.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}/deliveries",
    params(("webhook_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"), DeliveriesParams),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(webhook_id = %id.0))]
pub async fn list_deliveries(
    caller: Principal,
    State(api): State<WebhooksApi>,
    PathParam(id): PathParam<IdParam>,
    Params(p): Params<DeliveriesParams>,
) -> ApiResult {
    may_manage(&caller)?;
    let limit = match p.limit {
        None => DEFAULT_PAGE_SIZE,
        Some(l) if (1..=MAX_PAGE_SIZE).contains(&l) => l,
        Some(l) => {
            return Err(
                Problem::new(StatusCode::BAD_REQUEST, "invalid-query", "Invalid query parameters")
                    .detail(format!("limit must be between 1 and {MAX_PAGE_SIZE}, got {l}"))
                    .into(),
            )
        }
    };
    if tables::get_endpoint(&api.pool, id.0).await?.is_none() {
        return Err(no_endpoint(id.0).into());
    }
    let mut items = tables::list_deliveries(&api.pool, id.0, p.state, p.after.map(|a| a.0), limit + 1).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_after = if more { items.last().map(|d| d.id) } else { None };
    Ok(Json(DeliveryPage { items, next_after }).into_response())
}

/// Send a dead delivery again (service, admin): it is pending again with its attempts reset,
/// and the later changes of its order it held back follow it.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    params(("webhook_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"),
           ("delivery_id" = uuid::Uuid, Path, pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")),
    responses((status = 202, body = Delivery, description = "queued again"), (status = 400, body = ProblemDoc, content_type = "application/problem+json"), (status = 401, body = ProblemDoc, content_type = "application/problem+json"), (status = 403, body = ProblemDoc, content_type = "application/problem+json"), (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 409, body = ProblemDoc, content_type = "application/problem+json", description = "`delivery-not-dead`: it is pending or delivered")))]
#[tracing::instrument(skip_all, fields(webhook_id = %ids.0 .0, delivery_id = %ids.1 .0))]
pub async fn redeliver_delivery(
    caller: Principal,
    State(api): State<WebhooksApi>,
    PathParam(ids): PathParam<(IdParam, IdParam)>,
) -> ApiResult {
    may_manage(&caller)?;
    let (endpoint_id, delivery_id) = (ids.0 .0, ids.1 .0);
    match tables::redeliver(&api.pool, endpoint_id, delivery_id).await? {
        Redelivery::Queued(d) => {
            tracing::info!("dead webhook delivery queued again");
            metrics::counter!("surge_webhook_redeliveries_total").increment(1);
            Ok((StatusCode::ACCEPTED, Json(d)).into_response())
        }
        Redelivery::NotDead(d) => Err(
            Problem::new(StatusCode::CONFLICT, "delivery-not-dead", "Delivery is not dead")
                .detail(format!(
                    "delivery {delivery_id} is {}: only dead deliveries are redelivered",
                    d.state.as_str()
                ))
                .with("state", d.state.as_str())
                .into(),
        ),
        Redelivery::NotFound => Err(
            Problem::new(StatusCode::NOT_FOUND, "delivery-not-found", "No such delivery")
                .detail(format!("no delivery {delivery_id} of webhook {endpoint_id}"))
                .into(),
        ),
    }
}
