//! A projector's checkpoints hold Kafka offsets, which mean something only for one cluster and
//! one incarnation of a topic. When the broker's data is replaced, the topic is recreated, or
//! retention deletes messages before they were applied, the projector must notice, heal the
//! views from the event store, and follow Kafka again: never skip events silently.

use crate::support::{self, views_match_event_store};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;
use surge_events::StreamType;
use surge_runtime::KafkaConfig;
use surge_testkit::faults::PrivateBroker;
use surge_testkit::{count_reaches, eventually, TestEnv};

const OUTBOX_EMPTY: &str = "SELECT count(*) FROM outbox";

async fn place_orders(env: &TestEnv, cmd: &str, sku: &str, from: usize, n: usize) {
    let http = env.http();
    for i in from..from + n {
        let body = support::place_order(&http, cmd, &format!("cp{i}"), sku, 1).await;
        assert!(body["order_id"].is_string(), "order accepted: {body}");
    }
}

async fn views_catch_up(env: &TestEnv, why: &str) {
    let caught_up = eventually(Duration::from_secs(45), || async {
        views_match_event_store(env).await.then_some(())
    })
    .await;
    assert!(
        caught_up.is_some(),
        "{why}: the views never equalled the fold of the store"
    );
}

fn admin(kafka: &KafkaConfig) -> AdminClient<DefaultClientContext> {
    surge_runtime::kafka::client_config(kafka).create().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projector_heals_when_the_broker_data_is_replaced() {
    let mut env = TestEnv::new().await;
    let mut broker = PrivateBroker::start().await;
    env.kafka = KafkaConfig {
        brokers: broker.brokers.clone(),
        ..env.kafka.clone()
    };
    surge_runtime::kafka::ensure_topics(&env.kafka).await.unwrap();
    let (cmd, command) = support::command_api(&env).await;
    let http = env.http();
    support::add_item(&http, &cmd, "BR-1", 100, 1000).await;
    let relay = support::relay(&env).await;
    let projector = support::projector(&env, 20).await;
    place_orders(&env, &cmd, "BR-1", 0, 30).await;
    views_catch_up(&env, "before the broker is replaced").await;

    // The projector stops; orders keep coming and reach the old broker, never the views.
    projector.stop().await;
    place_orders(&env, &cmd, "BR-1", 30, 20).await;
    assert!(count_reaches(&env.pool, OUTBOX_EMPTY, 0, Duration::from_secs(30)).await);
    relay.stop().await;

    // The broker's data directory is deleted: a new cluster, no topics, no group offsets.
    broker.replace_data().await;
    surge_runtime::kafka::ensure_topics(&env.kafka).await.unwrap();
    let relay = support::relay(&env).await;
    place_orders(&env, &cmd, "BR-1", 50, 10).await;
    let projector = support::projector(&env, 20).await;
    views_catch_up(&env, "after the broker was replaced").await;

    let stamped: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_checkpoints WHERE cluster_id IS NULL OR topic_id IS NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stamped, 0, "every checkpoint names its cluster and topic");
    projector.stop().await;
    relay.stop().await;
    command.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projector_heals_when_its_topics_are_recreated() {
    let env = TestEnv::new().await;
    let (cmd, command) = support::command_api(&env).await;
    let http = env.http();
    support::add_item(&http, &cmd, "TR-1", 100, 1000).await;
    let relay = support::relay(&env).await;
    let projector = support::projector(&env, 20).await;
    place_orders(&env, &cmd, "TR-1", 0, 30).await;
    views_catch_up(&env, "before the topics are recreated").await;

    projector.stop().await;
    place_orders(&env, &cmd, "TR-1", 30, 20).await;
    assert!(count_reaches(&env.pool, OUTBOX_EMPTY, 0, Duration::from_secs(30)).await);
    relay.stop().await;

    // Deleted and created again: same names, new topic ids, offsets from 0.
    let topics = surge_events::topics::all_topics(&env.kafka.topic_prefix);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    admin(&env.kafka).delete_topics(&names, &opts).await.unwrap();
    let recreated = eventually(Duration::from_secs(30), || async {
        surge_runtime::kafka::ensure_topics(&env.kafka).await.ok()?;
        let id =
            surge_runtime::kafka::topic_identity(&env.kafka, &env.topic(StreamType::Order), Duration::from_secs(5))
                .await
                .ok()?;
        Some(id)
    })
    .await;
    assert!(recreated.is_some(), "topics recreated");
    let relay = support::relay(&env).await;
    place_orders(&env, &cmd, "TR-1", 50, 10).await;
    let projector = support::projector(&env, 20).await;
    views_catch_up(&env, "after the topics were recreated").await;
    projector.stop().await;
    relay.stop().await;
    command.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projector_heals_after_retention_deleted_messages_it_had_not_applied() {
    let env = TestEnv::new().await;
    let (cmd, command) = support::command_api(&env).await;
    let http = env.http();
    support::add_item(&http, &cmd, "RT-1", 100, 1000).await;
    let relay = support::relay(&env).await;
    let projector = support::projector(&env, 20).await;
    place_orders(&env, &cmd, "RT-1", 0, 20).await;
    views_catch_up(&env, "before retention").await;

    projector.stop().await;
    place_orders(&env, &cmd, "RT-1", 20, 20).await;
    assert!(count_reaches(&env.pool, OUTBOX_EMPTY, 0, Duration::from_secs(30)).await);

    // Retention deletes every message published so far, applied or not.
    let mut tpl = TopicPartitionList::new();
    for stream_type in [StreamType::Order, StreamType::Inventory] {
        let topic = env.topic(stream_type);
        for p in 0..env.kafka.partitions {
            tpl.add_partition_offset(&topic, p, Offset::End).unwrap();
        }
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let deleted = admin(&env.kafka).delete_records(&tpl, &opts).await.unwrap();
    for e in deleted.elements() {
        assert!(e.error().is_ok(), "records deleted: {:?}", e.error());
    }
    let low_moved = {
        let c: BaseConsumer = surge_runtime::kafka::client_config(&env.kafka).create().unwrap();
        let topic = env.topic(StreamType::Order);
        tokio::task::spawn_blocking(move || {
            (0..3).any(|p| {
                c.fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .is_ok_and(|(low, _)| low > 0)
            })
        })
        .await
        .unwrap()
    };
    assert!(low_moved, "the low watermark moved past unapplied messages");

    place_orders(&env, &cmd, "RT-1", 40, 5).await;
    let projector2 = support::projector(&env, 20).await;
    views_catch_up(&env, "after retention deleted unapplied messages").await;
    projector2.stop().await;
    relay.stop().await;
    command.stop().await;
    env.cleanup().await;
}
