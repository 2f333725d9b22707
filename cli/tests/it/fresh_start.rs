//! A newcomer's first `./dev demo`: a brand-new broker (its consumer groups not formed yet),
//! every service started at once, and the demo's flow run to the end at once. The demo must
//! wait until the pipeline can follow the sale, and the read side must never say that an item
//! the store has does not exist.

use crate::support::{self, Service};
use std::time::Duration;
use surge_cli::credentials::ClientAuth;
use surge_cli::demo::{run, DemoConfig};
use surge_command::{Relay, RelayConfig};
use surge_projections::{Projector, ProjectorConfig};
use surge_runtime::KafkaConfig;
use surge_testkit::faults::{free_addrs, PrivateBroker};
use surge_testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_runs_to_the_end_on_a_brand_new_broker() {
    let mut env = TestEnv::new().await;
    let broker = PrivateBroker::start().await;
    env.kafka = KafkaConfig {
        brokers: broker.brokers.clone(),
        ..env.kafka.clone()
    };
    surge_runtime::kafka::ensure_topics(&env.kafka).await.unwrap();

    let (cmd, command) = support::command_api(&env).await;
    // A short consistency wait: a read side that is not following yet shows at once.
    let (qry, query) = support::query_api_with(&env, |c| c.consistency_wait_ms = 100).await;
    let [relay_admin, projector_admin, projector_again] = free_addrs();
    let relay = Relay::build(RelayConfig {
        admin_addr: relay_admin,
        ..RelayConfig::new(support::db(&env), env.kafka.clone())
    })
    .await
    .expect("relay starts");
    let relay = Service::spawn(|s| async move { relay.run(s).await.unwrap() });
    let projector = Projector::build(ProjectorConfig {
        admin_addr: projector_admin,
        ..ProjectorConfig::new(support::db(&env), env.kafka.clone())
    })
    .await
    .expect("projector starts");
    let projector = Service::spawn(|s| async move { projector.run(s).await });

    let demo = run(DemoConfig {
        command_url: cmd,
        query_url: qry,
        shoppers: 60,
        hot_stock: 20,
        relay_admin_url: format!("http://{relay_admin}"),
        projector_admin_url: format!("http://{projector_admin}"),
        credentials: ClientAuth {
            token: None,
            jwt_secret: env.auth.jwt_secret.clone(),
        },
    });
    tokio::time::timeout(Duration::from_secs(120), demo)
        .await
        .expect("the demo ends within 2 minutes")
        .expect("the demo's flow runs to the end");
    assert!(
        support::views_match_event_store(&env).await,
        "the views equal the fold of the store"
    );

    // A second start on the same topics (the demo run again): everything was read already
    // and the relay's transaction markers keep the lag above zero, yet it must be ready.
    projector.stop().await;
    let projector_admin = projector_again;
    let again = Projector::build(ProjectorConfig {
        admin_addr: projector_admin,
        ..ProjectorConfig::new(support::db(&env), env.kafka.clone())
    })
    .await
    .expect("projector starts again");
    let projector = Service::spawn(|s| async move { again.run(s).await });
    let http = reqwest::Client::new();
    let ready = surge_testkit::eventually(Duration::from_secs(30), || async {
        let r = http.get(format!("http://{projector_admin}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "a projector restarted on read topics becomes ready");
    for s in [projector, relay, query, command] {
        s.stop().await;
    }
    env.cleanup().await;
}
