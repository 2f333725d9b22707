//! The stream API's typed configuration (`surge stream-api`), checked before anything is served.

use crate::StreamApiError;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use surge_runtime::{AuthConfig, DatabaseConfig};

#[derive(Debug, Clone, Args)]
pub struct StreamApiConfig {
    /// Address the gRPC stream API listens on (KurrentDB clients connect here).
    #[arg(long = "addr", env = "SURGE_STREAM_ADDR", default_value = StreamApiConfig::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// The `host:port` clients are told to connect to when they ask for the cluster's members
    /// (gossip); default: the address listened on. Set it when listening on 0.0.0.0.
    #[arg(long = "advertise-addr", env = "SURGE_STREAM_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// TLS certificate chain (PEM). Required unless the address is a loopback one.
    #[arg(long = "tls-cert-file", env = "SURGE_STREAM_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM) of the certificate.
    #[arg(long = "tls-key-file", env = "SURGE_STREAM_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// How long an idle subscription waits before it looks at the log again, in milliseconds.
    #[arg(
        long = "stream-poll-ms",
        env = "SURGE_STREAM_POLL_MS",
        default_value_t = StreamApiConfig::DEFAULT_POLL_MS,
        value_parser = clap::value_parser!(u64).range(1..=1000)
    )]
    pub poll_ms: u64,
    /// Most events one filtered `$all` read looks at: past it the read ends as if it had reached
    /// the end (the client reads on from its last event); a filtered subscription is sent a
    /// checkpoint at least this often. Bounds the work of a filter that never matches.
    #[arg(
        long = "stream-scan-limit",
        env = "SURGE_STREAM_SCAN_LIMIT",
        default_value_t = StreamApiConfig::DEFAULT_SCAN_LIMIT,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub scan_limit: u64,
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// Clients sign in with an API key: user name = the key's name, password = the key.
    #[command(flatten)]
    pub auth: AuthConfig,
}

impl StreamApiConfig {
    /// The port KurrentDB nodes serve their clients on, on loopback.
    pub const DEFAULT_ADDR: &'static str = "127.0.0.1:2113";
    pub const DEFAULT_POLL_MS: u64 = 15;
    pub const DEFAULT_SCAN_LIMIT: u64 = 100_000;

    /// Plain text on `addr` (tests and tools: `addr` should be a loopback one).
    pub fn new(addr: SocketAddr, db: DatabaseConfig, auth: AuthConfig) -> Self {
        StreamApiConfig {
            addr,
            advertise_addr: None,
            tls_cert_file: None,
            tls_key_file: None,
            poll_ms: Self::DEFAULT_POLL_MS,
            scan_limit: Self::DEFAULT_SCAN_LIMIT,
            db,
            auth,
        }
    }

    /// The host and port gossip names, given the address actually bound.
    pub fn advertised(&self, bound: SocketAddr) -> Result<(String, u16), StreamApiError> {
        let Some(advertised) = &self.advertise_addr else {
            return Ok((bound.ip().to_string(), bound.port()));
        };
        let bad = || StreamApiError::Config(format!("SURGE_STREAM_ADVERTISE_ADDR {advertised:?} is not host:port"));
        let (host, port) = advertised.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok((host.to_string(), port.parse().map_err(|_| bad())?))
    }

    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(1))
    }

    /// The certificate and key files when TLS is on; refuses a certificate without a key (or
    /// the other way round), and clear text on any address but a loopback one: clients send
    /// their API key with every call.
    pub fn tls_files(&self) -> Result<Option<(PathBuf, PathBuf)>, StreamApiError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
            (None, None) if self.addr.ip().is_loopback() => Ok(None),
            (None, None) => Err(StreamApiError::Config(format!(
                "{} is not a loopback address: set SURGE_STREAM_TLS_CERT_FILE and SURGE_STREAM_TLS_KEY_FILE \
                 (clients send their API key with every call)",
                self.addr
            ))),
            _ => Err(StreamApiError::Config(
                "set both SURGE_STREAM_TLS_CERT_FILE and SURGE_STREAM_TLS_KEY_FILE, or neither".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addr: &str) -> StreamApiConfig {
        StreamApiConfig::new(
            addr.parse().unwrap(),
            DatabaseConfig::new("postgres://surge:pw@127.0.0.1:5432/surge"),
            AuthConfig::default(),
        )
    }

    #[test]
    fn clear_text_only_on_loopback() {
        assert!(config("127.0.0.1:2113").tls_files().unwrap().is_none());
        assert!(config("[::1]:2113").tls_files().unwrap().is_none());
        let refused = config("0.0.0.0:2113").tls_files().unwrap_err().to_string();
        assert!(refused.contains("SURGE_STREAM_TLS_CERT_FILE"), "{refused}");
    }

    #[test]
    fn gossip_names_the_advertised_address_or_the_bound_one() {
        let mut c = config("0.0.0.0:2113");
        let bound = "0.0.0.0:2113".parse().unwrap();
        assert_eq!(c.advertised(bound).unwrap(), ("0.0.0.0".to_string(), 2113));
        c.advertise_addr = Some("surge.example.com:2113".into());
        assert_eq!(c.advertised(bound).unwrap(), ("surge.example.com".to_string(), 2113));
        c.advertise_addr = Some("[2001:db8::1]:443".into());
        assert_eq!(c.advertised(bound).unwrap(), ("2001:db8::1".to_string(), 443));
        c.advertise_addr = Some("no-port".into());
        assert!(c.advertised(bound).is_err());
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let mut c = config("0.0.0.0:2113");
        c.tls_cert_file = Some("cert.pem".into());
        assert!(c.tls_files().is_err());
        c.tls_key_file = Some("key.pem".into());
        assert_eq!(c.tls_files().unwrap(), Some(("cert.pem".into(), "key.pem".into())));
    }
}
