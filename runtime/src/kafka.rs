//! Kafka client settings and topic administration. All Kafka traffic goes through rdkafka.

use crate::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KafkaAdminError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
}

/// The base client settings every producer, consumer and admin client starts from.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4");
    c
}

/// Creates Surge's event topics if they do not exist yet (broker auto-create is off).
pub async fn ensure_topics(config: &KafkaConfig) -> Result<Vec<String>, KafkaAdminError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let names = surge_events::topics::all_topics(&config.topic_prefix);
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(n, config.partitions, TopicReplication::Fixed(1))
                .set("min.insync.replicas", "1")
                .set("retention.ms", "-1")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = admin.create_topics(topics.iter(), &opts).await?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(KafkaAdminError::CreateTopic { topic, code });
            }
        }
    }
    Ok(names)
}

/// Asks the broker for cluster metadata: the broker is ready when this answers.
pub fn check_broker(config: &KafkaConfig, timeout: Duration) -> Result<usize, KafkaAdminError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let md = admin.inner().fetch_metadata(None, timeout)?;
    Ok(md.brokers().len())
}
