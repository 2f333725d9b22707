//! The served OpenAPI document says what the server enforces, no more and no less: unknown
//! fields refused (`additionalProperties: false`), path parameters with their patterns, integer
//! fields that may come as integral floats, and links that chain an order through its life.

use crate::support::start_api;
use serde_json::{json, Value};
use surge_testkit::TestEnv;

const SKU_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
const UUID_PATTERN: &str = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

fn path_parameter<'a>(doc: &'a Value, path: &str, name: &str) -> &'a Value {
    doc["paths"][path]["post"]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{path} has parameters"))
        .iter()
        .find(|p| p["name"] == name && p["in"] == "path")
        .unwrap_or_else(|| panic!("{path} has the path parameter {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_says_what_the_server_enforces() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    let doc = api.openapi().await;
    let schemas = &doc["components"]["schemas"];

    // Every body the server reads with deny_unknown_fields says so, down to the price.
    for name in [
        "PlaceOrderRequest",
        "OrderLineRequest",
        "AddItemRequest",
        "RestockRequest",
        "PaymentRequest",
        "MoneyDoc",
    ] {
        assert_eq!(
            schemas[name]["additionalProperties"], false,
            "{name}: {}",
            schemas[name]
        );
    }
    assert_eq!(
        schemas["MoneyDoc"]["properties"]["minor"]["maximum"],
        i64::MAX,
        "{}",
        schemas["MoneyDoc"]
    );

    let sku = path_parameter(&doc, "/v1/inventory/{sku}/restock", "sku");
    assert_eq!(sku["schema"]["pattern"], SKU_PATTERN, "{sku}");
    for path in ["/v1/orders/{order_id}/cancel", "/v1/orders/{order_id}/payment"] {
        let id = path_parameter(&doc, path, "order_id");
        assert_eq!(id["schema"]["pattern"], UUID_PATTERN, "{path}: {id}");
        assert_eq!(id["schema"]["format"], "uuid", "{path}: {id}");
    }

    // POST /v1/orders links to the operations on the order it placed.
    let operation_ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|item| item["post"]["operationId"].as_str())
        .collect();
    let links = &doc["paths"]["/v1/orders"]["post"]["responses"]["202"]["links"];
    for (link, operation) in [("CancelOrder", "cancel_order"), ("PayOrder", "submit_payment")] {
        assert_eq!(links[link]["operationId"], operation, "{links}");
        assert_eq!(
            links[link]["parameters"]["order_id"], "$response.body#/order_id",
            "{links}"
        );
        assert!(operation_ids.contains(&operation), "{operation} is in the document");
    }
    let links = &doc["paths"]["/v1/catalog/items"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["PlaceOrder"]["operationId"], "place_order", "{links}");
    assert_eq!(
        links["PlaceOrder"]["requestBody"]["lines"][0]["sku"], "$response.body#/sku",
        "{links}"
    );
    assert_eq!(links["Restock"]["parameters"]["sku"], "$response.body#/sku", "{links}");

    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_may_be_integral_floats_and_nothing_more() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    let problem = |slug: &str| format!("https://surge.dev/problems/{slug}");

    let (s, body) = api
        .post(
            "/v1/catalog/items",
            json!({"sku": "F-1", "name": "Float", "category": "test",
                   "price": {"minor": 1000.0, "currency": "EUR"}, "initial_stock": 10.0}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = api.post("/v1/inventory/F-1/restock", json!({"quantity": 1e1})).await;
    assert_eq!(s, 200, "{body}");

    let (s, order) = api
        .post(
            "/v1/orders",
            json!({"customer_id": "fay", "lines": [{"sku": "F-1", "quantity": 2.0}]}),
        )
        .await;
    assert_eq!(s, 202, "{order}");
    assert_eq!(order["total"], json!({"minor": 2000, "currency": "EUR"}));

    // A fraction, a number beyond i64, an unknown field in the price: 400 problems.
    for (path, body) in [
        (
            "/v1/orders",
            json!({"customer_id": "fay", "lines": [{"sku": "F-1", "quantity": 2.5}]}),
        ),
        (
            "/v1/orders",
            json!({"customer_id": "fay", "lines": [{"sku": "F-1", "quantity": 1e19}]}),
        ),
        ("/v1/inventory/F-1/restock", json!({"quantity": 0.5})),
        (
            "/v1/catalog/items",
            json!({"sku": "F-2", "name": "Float", "category": "test",
                   "price": {"minor": 10.5, "currency": "EUR"}}),
        ),
        (
            "/v1/catalog/items",
            json!({"sku": "F-2", "name": "Float", "category": "test",
                   "price": {"minor": 10, "currency": "EUR", "tax": 1}}),
        ),
        (
            "/v1/catalog/items",
            json!({"sku": "F-2", "name": "Float", "category": "test",
                   "price": {"minor": -1.0, "currency": "EUR"}}),
        ),
    ] {
        let (s, p) = api.post(path, body.clone()).await;
        assert_eq!(
            (s, p["type"].as_str().unwrap_or_default()),
            (400, problem("invalid-body").as_str()),
            "{body}: {p}"
        );
    }

    // The order id in a path is the hyphenated UUID the document gives, and only that.
    let id = order["order_id"].as_str().unwrap();
    let (s, p) = api
        .post(&format!("/v1/orders/{}/cancel", id.replace('-', "")), json!({}))
        .await;
    assert_eq!(
        (s, p["type"].as_str().unwrap_or_default()),
        (400, problem("invalid-path").as_str()),
        "{p}"
    );
    let (s, p) = api.post(&format!("/v1/orders/{id}/cancel"), json!({})).await;
    assert_eq!(s, 200, "{p}");

    api.stop().await;
    env.cleanup().await;
}
