//! The operator console in a real browser: Debian's headless Chromium driven through
//! chromedriver by fantoccini, against the real stack. Skipped with a message where Chromium
//! is not installed, unless SURGE_REQUIRE_BROWSER is set (`./dev test` installs it and sets it).

use crate::support;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use surge_runtime::Role;
use surge_testkit::{eventually, TestEnv};

fn installed(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(chromium: &std::path::Path, chromedriver: &std::path::Path) -> (Client, Driver) {
    // Two TLS backends are linked into the test binary; the WebDriver client needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Driver(
        std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1700"]
        }
    }))
    .unwrap();
    let client = eventually(Duration::from_secs(20), || async {
        ClientBuilder::rustls()
            .ok()?
            .capabilities(caps.clone())
            .connect(&url)
            .await
            .ok()
    })
    .await
    .expect("a browser session opens");
    (client, driver)
}

async fn text(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn number(s: &str) -> f64 {
    s.replace(',', "").trim().parse().unwrap_or(0.0)
}

async fn place(http: &reqwest::Client, cmd: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = support::place_order(http, cmd, &format!("{tag}-{i}"), "DROP-1", 1).await;
        ids.push(r["order_id"].as_str().expect("order accepted").to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_live_figures_events_and_projections_in_a_real_browser() {
    let (Some(chromium), Some(chromedriver)) = (
        installed(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]),
        installed(&["/usr/bin/chromedriver"]),
    ) else {
        assert!(
            std::env::var_os("SURGE_REQUIRE_BROWSER").is_none(),
            "Chromium and chromedriver are required here (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: the console browser test needs Debian's chromium and chromium-driver");
        return;
    };
    let env = TestEnv::new().await;
    let (cmd, command) = support::command_api(&env).await;
    let relay = support::relay(&env).await;
    let projector = support::projector(&env, 50).await;
    // Every service of this test runs in this process, so the command API's /metrics carries
    // the relay's and the projector's figures too.
    let metrics = format!("{cmd}/metrics");
    let (qry, query) = support::query_api_with(&env, |c| c.console_metrics_urls = vec![metrics]).await;
    let http = env.http();
    support::add_item(&http, &cmd, "DROP-1", 12_900, 100).await;
    let first = place(&http, &cmd, 5, "early").await;

    // Without a session the console's data is refused; a customer may not use it.
    let anonymous = reqwest::get(format!("{qry}/console/api/whoami")).await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let customer = env.client_as("c-1", Role::Customer);
    let r = customer.get(format!("{qry}/console/live")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let (client, _driver) = browser(&chromium, &chromedriver).await;
    let token = env.token("ops", Role::Admin);
    client.goto(&format!("{qry}/console#token={token}")).await.unwrap();
    let signed_in = eventually(Duration::from_secs(15), || async {
        text(&client, "#who").await.contains("ops (admin)").then_some(())
    })
    .await;
    assert!(signed_in.is_some(), "the token link signs in");

    // Live figures arrive, and move when orders come in.
    let before = eventually(Duration::from_secs(20), || async {
        let n = number(&text(&client, "#orders-accepted").await);
        let hot = text(&client, "#hot-skus").await;
        (n >= 5.0 && hot.contains("DROP-1")).then_some(n)
    })
    .await
    .expect("accepted orders and the hot SKU are shown");
    place(&http, &cmd, 10, "late").await;
    let moved = eventually(Duration::from_secs(20), || async {
        (number(&text(&client, "#orders-accepted").await) >= before + 10.0).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the live counter follows new orders without a reload");
    assert_eq!(text(&client, "#live-status").await, "live");

    // Event browser: an order's stream, then everything of its checkout by correlation id.
    let stream = format!("order-{}", first[0]);
    client
        .find(Locator::Css("#stream-id"))
        .await
        .unwrap()
        .send_keys(&stream)
        .await
        .unwrap();
    client
        .find(Locator::Css("#stream-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = eventually(Duration::from_secs(10), || async {
        let t = text(&client, "#events").await;
        t.contains("OrderPlaced").then_some(())
    })
    .await;
    assert!(shown.is_some(), "the order's events are listed");
    client
        .find(Locator::Css("#events button.link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let correlated = eventually(Duration::from_secs(10), || async {
        let t = text(&client, "#events").await;
        (text(&client, "#events-heading").await.starts_with("correlation") && t.contains("StockReserved")).then_some(())
    })
    .await;
    assert!(
        correlated.is_some(),
        "the correlation id leads to the stock reservation of the same checkout"
    );

    // Projection panel: both projections, then a rebuild of the catalog with its progress.
    let listed = eventually(Duration::from_secs(10), || async {
        let t = text(&client, "#projections").await;
        (t.contains("catalog") && t.contains("orders")).then_some(())
    })
    .await;
    assert!(listed.is_some(), "both projections are listed");
    std::fs::create_dir_all(screenshot_dir()).unwrap();
    std::fs::write(screenshot_dir().join("console.png"), client.screenshot().await.unwrap()).unwrap();
    client
        .find(Locator::XPath("//button[text()='Rebuild catalog']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let rebuilt = eventually(Duration::from_secs(30), || async {
        text(&client, "#replay-status")
            .await
            .starts_with("Rebuilt catalog")
            .then_some(())
    })
    .await;
    assert!(rebuilt.is_some(), "the rebuild runs and reports its switch");
    let item: serde_json::Value = reqwest::get(format!("{qry}/v1/catalog/items/DROP-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(item["reserved"], 15, "the rebuilt view holds every reservation");
    std::fs::write(
        screenshot_dir().join("console-after-rebuild.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    client.close().await.unwrap();
    projector.stop().await;
    relay.stop().await;
    query.stop().await;
    command.stop().await;
    env.cleanup().await;
}

/// `target/console/` of the repository, for people to look at.
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console")
}
