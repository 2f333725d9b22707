//! The registration API on the real command API: who may call it, what it shows, what it refuses.

use crate::support::Rig;
use reqwest::Method;
use serde_json::json;
use surge_runtime::Role;
use surge_webhooks::UrlPolicy;

const REFUSED: &str = "https://surge.dev/problems/webhook-url-refused";

#[tokio::test]
async fn registration_needs_the_service_or_admin_role() {
    let rig = Rig::without_webhooks(UrlPolicy::loopback_allowed()).await;
    let body = json!({"url": "http://127.0.0.1:9/hook", "event_types": ["order.paid"]});
    let anonymous = reqwest::Client::new();
    let customer = rig.env.client_as("shopper-1", Role::Customer);
    let analyst = rig.env.client_as("analyst-1", Role::Analyst);
    assert_eq!(
        rig.call(&anonymous, Method::POST, "/v1/webhooks", Some(body.clone()))
            .await
            .0,
        401
    );
    assert_eq!(rig.call(&anonymous, Method::GET, "/v1/webhooks", None).await.0, 401);
    for caller in [&customer, &analyst] {
        let (status, problem) = rig.call(caller, Method::POST, "/v1/webhooks", Some(body.clone())).await;
        assert_eq!(status, 403, "{problem}");
        assert_eq!(problem["type"], "https://surge.dev/problems/forbidden");
        assert_eq!(rig.call(caller, Method::GET, "/v1/webhooks", None).await.0, 403);
    }
    assert_eq!(
        rig.call(&rig.service, Method::POST, "/v1/webhooks", Some(body.clone()))
            .await
            .0,
        201
    );
    assert_eq!(
        rig.call(&rig.admin, Method::POST, "/v1/webhooks", Some(body)).await.0,
        201
    );
    rig.stop().await;
}

#[tokio::test]
async fn the_secret_is_shown_once() {
    let rig = Rig::without_webhooks(UrlPolicy::loopback_allowed()).await;
    let (status, created) = rig
        .call(
            &rig.service,
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/hook#ignored", "event_types": ["order.paid", "order.placed", "order.paid"]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");
    assert_eq!(created["url"], "http://127.0.0.1:9/hook", "the fragment is dropped");
    assert_eq!(
        created["event_types"],
        json!(["order.placed", "order.paid"]),
        "each type once"
    );
    assert_eq!(created["state"], "active");
    assert_eq!(created["created_by"], "service:storefront");
    let id = created["id"].as_str().unwrap();

    let (_, list) = rig.call(&rig.service, Method::GET, "/v1/webhooks", None).await;
    let (_, one) = rig
        .call(&rig.service, Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(list["items"][0]["id"], id);
    assert_eq!(one["id"], id);
    for shown in [list.to_string(), one.to_string()] {
        assert!(!shown.contains(secret) && !shown.contains("secret"), "{shown}");
    }
    rig.stop().await;
}

#[tokio::test]
async fn private_loopback_and_plain_http_urls_are_refused_without_the_allow_list() {
    let rig = Rig::without_webhooks(UrlPolicy::default()).await;
    for url in [
        "https://10.0.0.1/hook",
        "https://192.168.1.1/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        // A name that resolves to loopback.
        "https://localhost/hook",
        "http://localhost/hook",
        "http://example.com/hook",
        "https://user:pass@example.com/hook",
        "ftp://example.com/hook",
        "HTTPS://example.com/hook",
    ] {
        let (status, problem) = rig
            .call(
                &rig.service,
                Method::POST,
                "/v1/webhooks",
                Some(json!({"url": url, "event_types": ["order.paid"]})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert_eq!(problem["type"], REFUSED, "{url}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{problem}");
    }
    // Malformed bodies are 400s, as everywhere.
    for body in [
        json!({"url": "https://example.com/", "event_types": []}),
        json!({"url": "https://example.com/", "event_types": ["order.shipped"]}),
        json!({"url": "https://example.com/", "event_types": ["order.paid"], "secret": "mine"}),
        json!({"event_types": ["order.paid"]}),
    ] {
        let (status, problem) = rig
            .call(&rig.service, Method::POST, "/v1/webhooks", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {problem}");
    }
    let (_, list) = rig.call(&rig.service, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(list["items"], json!([]), "nothing was registered");
    rig.stop().await;
}

#[tokio::test]
async fn endpoints_are_paused_resumed_and_deleted_and_unknown_ids_are_404() {
    let rig = Rig::without_webhooks(UrlPolicy::loopback_allowed()).await;
    let (id, _) = rig.register("http://127.0.0.1:9/hook", &["order.paid"]).await;
    let (status, paused) = rig
        .call(&rig.service, Method::POST, &format!("/v1/webhooks/{id}/pause"), None)
        .await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    let (_, shown) = rig
        .call(&rig.service, Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(shown["state"], "paused");
    let (status, resumed) = rig
        .call(&rig.service, Method::POST, &format!("/v1/webhooks/{id}/resume"), None)
        .await;
    assert_eq!((status, resumed["state"].as_str()), (200, Some("active")));
    let (status, page) = rig
        .call(
            &rig.service,
            Method::GET,
            &format!("/v1/webhooks/{id}/deliveries?state=dead"),
            None,
        )
        .await;
    assert_eq!((status, page), (200, json!({"items": [], "next_after": null})));

    assert_eq!(
        rig.call(&rig.service, Method::DELETE, &format!("/v1/webhooks/{id}"), None)
            .await
            .0,
        204
    );
    let unknown = uuid::Uuid::new_v4();
    for (method, path) in [
        (Method::DELETE, format!("/v1/webhooks/{id}")),
        (Method::GET, format!("/v1/webhooks/{unknown}")),
        (Method::POST, format!("/v1/webhooks/{unknown}/pause")),
        (Method::GET, format!("/v1/webhooks/{unknown}/deliveries")),
    ] {
        let (status, problem) = rig.call(&rig.service, method, &path, None).await;
        assert_eq!(status, 404, "{path}: {problem}");
        assert_eq!(problem["type"], "https://surge.dev/problems/webhook-not-found");
    }
    let (status, _) = rig
        .call(&rig.service, Method::GET, "/v1/webhooks/not-a-uuid", None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = rig
        .call(
            &rig.service,
            Method::GET,
            &format!("/v1/webhooks/{unknown}/deliveries?limit=0"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    rig.stop().await;
}

#[tokio::test]
async fn the_command_api_document_describes_the_webhook_routes() {
    let rig = Rig::without_webhooks(UrlPolicy::default()).await;
    let (status, doc) = rig.call(&rig.admin, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/webhooks",
        "/v1/webhooks/{webhook_id}",
        "/v1/webhooks/{webhook_id}/pause",
        "/v1/webhooks/{webhook_id}/resume",
        "/v1/webhooks/{webhook_id}/deliveries",
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let register = &doc["components"]["schemas"]["RegisterWebhook"];
    assert_eq!(register["additionalProperties"], false, "{register}");
    assert_eq!(register["properties"]["url"]["pattern"], "^https?://[!-~]+$");
    let param = &doc["paths"]["/v1/webhooks/{webhook_id}/pause"]["post"]["parameters"][0];
    assert!(param["schema"]["pattern"].is_string(), "{param}");
    let links = &doc["paths"]["/v1/webhooks"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["PauseWebhook"]["operationId"], "pause_webhook", "{links}");
    assert_eq!(
        links["PauseWebhook"]["parameters"]["webhook_id"], "$response.body#/id",
        "{links}"
    );
    assert!(doc["paths"]["/v1/webhooks/{webhook_id}"]["delete"].is_object());
    assert!(doc["paths"]["/v1/webhooks/{webhook_id}"]["get"].is_object());
    // The command routes are still there.
    assert!(doc["paths"]["/v1/orders"].is_object());
    rig.stop().await;
}
