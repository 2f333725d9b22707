//! How the CLI's tools (demo, loadgen) authenticate to the APIs, and `surge token`, which
//! issues local tokens and API keys.

use anyhow::Context;
use clap::Args;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use surge_runtime::auth::new_api_key;
use surge_runtime::{AuthConfig, Role};

/// The credentials of a tool: a token given as is, or one minted from the local HS256 secret.
/// Both are secrets: `Debug` never shows them.
#[derive(Debug, Clone, Args)]
pub struct ClientAuth {
    /// Bearer token to call the APIs with (default: an admin token issued with SURGE_JWT_SECRET).
    #[arg(long = "token", env = "SURGE_TOKEN", hide_env_values = true)]
    pub token: Option<SecretString>,
    /// HS256 secret the services check tokens with (local deploys).
    #[arg(long = "jwt-secret", env = "SURGE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
}

impl ClientAuth {
    /// A token for `subject` with `role`, issued with the local secret.
    pub fn issue(&self, subject: &str, role: Role) -> anyhow::Result<String> {
        let secret = self
            .jwt_secret
            .clone()
            .context("set SURGE_JWT_SECRET (or pass --token) to call the APIs")?;
        Ok(AuthConfig::hs256(secret)
            .build()?
            .issue(subject, role, Duration::from_secs(3600))?)
    }

    /// The tool's own bearer token: `--token`, else an admin token for `tool`.
    pub fn bearer(&self, tool: &str) -> anyhow::Result<String> {
        match &self.token {
            Some(t) => Ok(t.expose_secret().to_string()),
            None => self.issue(tool, Role::Admin),
        }
    }

    /// An HTTP client that sends the tool's token with every request.
    pub fn client(&self, tool: &str, builder: reqwest::ClientBuilder) -> anyhow::Result<reqwest::Client> {
        let mut headers = HeaderMap::new();
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.bearer(tool)?))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
        Ok(builder.default_headers(headers).build()?)
    }
}

#[derive(Clone, Args)]
pub struct TokenConfig {
    /// Role of the token (or API key).
    #[arg(long, value_enum, default_value_t = Role::Customer)]
    pub role: Role,
    /// Subject: the customer id for customers, a name otherwise.
    #[arg(long, default_value = "dev")]
    pub sub: String,
    /// Lifetime of the token, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// Make an API key for a service client named `sub` instead of a token.
    #[arg(long)]
    pub api_key: bool,
    /// Make an API key for an analyst named `sub` and print the KurrentDB client connection
    /// string of the stream API that holds it (role analyst or admin).
    #[arg(long, conflicts_with = "api_key")]
    pub connection_string: bool,
    /// The stream API's address, for the connection string.
    #[arg(long, env = "SURGE_STREAM_ADDR", default_value = "127.0.0.1:2113")]
    pub stream_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub auth: AuthConfig,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("role", &self.role)
            .field("sub", &self.sub)
            .finish()
    }
}

/// `surge token`: prints a token (stdout, alone, for `$(surge token ...)`), or an API key and
/// the entry to add to SURGE_API_KEYS.
pub fn run(c: &TokenConfig) -> anyhow::Result<()> {
    if c.connection_string {
        anyhow::ensure!(
            matches!(c.role, Role::Analyst | Role::Admin),
            "the stream API reads for roles analyst and admin only (got {})",
            c.role.as_str()
        );
        let (key, entry) = new_api_key(&c.sub, c.role);
        println!("{}", connection_string(&c.sub, &key, c.stream_addr));
        eprintln!("SURGE_API_KEYS entry for the stream API (only the hash): {entry}");
        return Ok(());
    }
    if c.api_key {
        let (key, entry) = new_api_key(&c.sub, c.role);
        println!("api key (give it to the client, it is not stored): {key}");
        println!("SURGE_API_KEYS entry (only the hash):                {entry}");
        return Ok(());
    }
    let token = c.auth.build()?.issue(&c.sub, c.role, Duration::from_secs(c.ttl_secs))?;
    println!("{token}");
    Ok(())
}

/// The KurrentDB client connection string of the stream API at `addr` for the API key `key` of
/// `name`: clear text on loopback only (the stream API refuses clear text elsewhere).
pub fn connection_string(name: &str, key: &str, addr: std::net::SocketAddr) -> String {
    let tls = !addr.ip().is_loopback();
    format!("esdb://{}:{}@{addr}?tls={tls}", userinfo(name), userinfo(key))
}

/// Percent-encodes what a URL's user information may not hold as is.
fn userinfo(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token_or_the_secret() {
        let (token, secret) = ("tok-0123456789", "jwt-secret-0123456789abcdef012345");
        let auth = ClientAuth {
            token: Some(token.into()),
            jwt_secret: Some(secret.into()),
        };
        let shown = format!("{auth:?}");
        assert!(!shown.contains(token) && !shown.contains(secret), "{shown}");
        assert_eq!(auth.bearer("test").unwrap(), token);
        let config = TokenConfig {
            role: Role::Admin,
            sub: "ops".into(),
            ttl_secs: 60,
            api_key: false,
            connection_string: false,
            stream_addr: "127.0.0.1:2113".parse().unwrap(),
            auth: AuthConfig::hs256(secret),
        };
        assert!(!format!("{config:?}").contains(secret));
    }

    #[test]
    fn a_connection_string_holds_the_key_and_asks_for_tls_off_loopback() {
        let (key, _) = new_api_key("ana", Role::Analyst);
        assert_eq!(
            connection_string("ana", &key, "127.0.0.1:2113".parse().unwrap()),
            format!("esdb://ana:{key}@127.0.0.1:2113?tls=false")
        );
        assert_eq!(
            connection_string("a b", "k:y", "10.0.0.5:2113".parse().unwrap()),
            "esdb://a%20b:k%3Ay@10.0.0.5:2113?tls=true"
        );
    }
}
