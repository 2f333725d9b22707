//! What can go wrong while a service starts, before it serves anything.

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("connecting to Postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Binds a TCP listener (port 0 picks a free port, as tests do).
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, StartupError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })
}
