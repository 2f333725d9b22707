//! Who is calling: bearer tokens (JWT) and API keys, turned into a [`Principal`] with a [`Role`].
//!
//! - Tokens: HS256 with a shared secret for local use (`surge token` issues them), RS256 with an
//!   identity provider's public key (PEM) or key set (JWKS file, keys chosen by `kid`). Issuer,
//!   audience and expiry are always checked.
//! - API keys (service clients): `surge_<name>_<secret>`. Only `name:role:sha256(key)` entries
//!   are configured, so the keys themselves are stored nowhere. They are long random strings, so
//!   a fast hash is the right one (no password stretching needed).
//! - [`authenticate`] is a middleware: no credentials leaves the request anonymous, bad ones
//!   answer 401 at once. Handlers take [`Principal`] (401 when anonymous) and ask it for a role
//!   or for the right to act for a customer (403 otherwise).

use crate::Problem;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;
use http::request::Parts;
use http::{header, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const API_KEY_HEADER: &str = "x-api-key";
const API_KEY_PREFIX: &str = "surge_";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A shopper: places, pays, cancels and reads its own orders only (the token's subject is
    /// its customer id).
    Customer,
    /// A trusted backend (a storefront) acting for any customer: orders, payments, reads.
    Service,
    /// Operations: catalog, restock, every order, the console, replays.
    Admin,
    /// Read-only analysis: orders, statistics, the event browser, exports and replays.
    Analyst,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Service => "service",
            Role::Admin => "admin",
            Role::Analyst => "analyst",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Role as clap::ValueEnum>::from_str(s, true).map_err(|_| format!("unknown role {s:?}"))
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub` (a customer id for customers) or the API key's name.
    pub subject: String,
    pub role: Role,
}

impl Principal {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "role {} may not do this (needs one of: {})",
                self.role.as_str(),
                roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    }

    /// 403 unless the caller may change `customer`'s orders: that customer, a service or an admin.
    pub fn may_act_for(&self, customer: &str) -> Result<(), Problem> {
        match self.role {
            Role::Service | Role::Admin => Ok(()),
            Role::Customer if self.subject == customer => Ok(()),
            Role::Customer => Err(Problem::forbidden("a customer may only act on its own orders")),
            Role::Analyst => Err(Problem::forbidden("role analyst is read-only")),
        }
    }

    /// 403 unless the caller may read `customer`'s orders: that customer, service, admin, analyst.
    pub fn may_read(&self, customer: &str) -> Result<(), Problem> {
        match self.role {
            Role::Customer if self.subject != customer => {
                Err(Problem::forbidden("a customer may only read its own orders"))
            }
            _ => Ok(()),
        }
    }

    /// The actor recorded in event metadata.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.subject)
    }
}

fn challenge(p: Problem, error: Option<&str>) -> Response {
    let mut res = p.into_response();
    let value = match error {
        Some(e) => format!("Bearer realm=\"surge\", error=\"{e}\""),
        None => "Bearer realm=\"surge\"".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            challenge(
                Problem::unauthenticated("send a bearer token (Authorization: Bearer ...) or an X-Api-Key"),
                None,
            )
        })
    }
}

/// How tokens and keys are checked. Secrets come from the environment or files, never the
/// command line in production, and are never logged: the HS256 secret is a [`SecretString`],
/// whose `Debug` hides it. API key entries are hashes, not secrets.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// HS256 secret that signs and checks bearer tokens (local and single-team deploys).
    #[arg(long = "jwt-secret", env = "SURGE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
    /// File holding the HS256 secret (instead of SURGE_JWT_SECRET).
    #[arg(long = "jwt-secret-file", env = "SURGE_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// RS256: the identity provider's public key, PEM.
    #[arg(long = "jwt-public-key-file", env = "SURGE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// RS256: the identity provider's key set (JWKS JSON); the token's `kid` picks the key.
    #[arg(long = "jwt-jwks-file", env = "SURGE_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Required `iss` of tokens.
    #[arg(long = "jwt-issuer", env = "SURGE_JWT_ISSUER", default_value = AuthConfig::DEFAULT_ISSUER)]
    pub issuer: String,
    /// Required `aud` of tokens.
    #[arg(long = "jwt-audience", env = "SURGE_JWT_AUDIENCE", default_value = AuthConfig::DEFAULT_AUDIENCE)]
    pub audience: String,
    /// API keys of service clients as `name:role:sha256hex` (comma-separated; `surge token
    /// --api-key` makes one). Only the hash is configured.
    #[arg(
        long = "api-keys",
        env = "SURGE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
}

/// Nothing configured (no way in yet), with the command line's issuer and audience.
impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_jwks_file: None,
            issuer: Self::DEFAULT_ISSUER.into(),
            audience: Self::DEFAULT_AUDIENCE.into(),
            api_keys: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no authentication configured: set SURGE_JWT_SECRET (HS256), SURGE_JWT_PUBLIC_KEY_FILE or SURGE_JWT_JWKS_FILE (RS256), or SURGE_API_KEYS")]
    NotConfigured,
    #[error("reading {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("the HS256 secret (SURGE_JWT_SECRET or SURGE_JWT_SECRET_FILE) must be at least 32 bytes")]
    WeakSecret,
    #[error("bad key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
    #[error("bad JWKS: {0}")]
    Jwks(String),
    #[error("bad API key entry #{0}: expected name:role:sha256hex")]
    ApiKeyEntry(usize),
    #[error("tokens can only be issued with an HS256 secret")]
    CannotIssue,
}

/// The claims Surge reads (and `surge token` writes).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

enum Verifier {
    Single(DecodingKey, Algorithm),
    KeySet(HashMap<String, DecodingKey>),
}

/// The checker built from [`AuthConfig`], shared by every request.
pub struct Authenticator {
    verifiers: Vec<Verifier>,
    /// What a token must satisfy (issuer, audience, expiry), per algorithm, built once.
    hs256: Validation,
    rs256: Validation,
    issuer: String,
    audience: String,
    signing: Option<EncodingKey>,
    api_keys: HashMap<[u8; 32], Principal>,
}

impl AuthConfig {
    pub const DEFAULT_ISSUER: &'static str = "surge";
    pub const DEFAULT_AUDIENCE: &'static str = "surge";

    /// HS256 with `secret` (tests and local tools).
    pub fn hs256(secret: impl Into<SecretString>) -> AuthConfig {
        AuthConfig {
            jwt_secret: Some(secret.into()),
            ..AuthConfig::default()
        }
    }

    /// The HS256 secret given directly (not through a file): only for handing it on to a
    /// process or tool that checks or signs tokens with it.
    pub fn expose_jwt_secret(&self) -> Option<&str> {
        self.jwt_secret.as_ref().map(|s| s.expose_secret())
    }

    fn secret(&self) -> Result<Option<SecretSlice<u8>>, AuthError> {
        if let Some(s) = &self.jwt_secret {
            return Ok(Some(s.expose_secret().as_bytes().to_vec().into()));
        }
        match &self.jwt_secret_file {
            Some(path) => {
                let raw = SecretSlice::from(std::fs::read(path).map_err(|e| AuthError::File(path.clone(), e))?);
                Ok(Some(raw.expose_secret().trim_ascii().to_vec().into()))
            }
            None => Ok(None),
        }
    }

    pub fn build(&self) -> Result<Arc<Authenticator>, AuthError> {
        let mut verifiers = Vec::new();
        let mut signing = None;
        if let Some(secret) = self.secret()? {
            let secret = secret.expose_secret();
            if secret.len() < 32 {
                return Err(AuthError::WeakSecret);
            }
            verifiers.push(Verifier::Single(DecodingKey::from_secret(secret), Algorithm::HS256));
            signing = Some(EncodingKey::from_secret(secret));
        }
        if let Some(path) = &self.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|e| AuthError::File(path.clone(), e))?;
            verifiers.push(Verifier::Single(DecodingKey::from_rsa_pem(&pem)?, Algorithm::RS256));
        }
        if let Some(path) = &self.jwt_jwks_file {
            let raw = std::fs::read(path).map_err(|e| AuthError::File(path.clone(), e))?;
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_slice(&raw).map_err(|e| AuthError::Jwks(e.to_string()))?;
            let mut keys = HashMap::new();
            for jwk in &set.keys {
                let kid = jwk
                    .common
                    .key_id
                    .clone()
                    .ok_or_else(|| AuthError::Jwks("a key has no kid".into()))?;
                keys.insert(kid, DecodingKey::from_jwk(jwk)?);
            }
            verifiers.push(Verifier::KeySet(keys));
        }
        let mut api_keys = HashMap::new();
        for (i, entry) in self.api_keys.iter().enumerate().filter(|(_, e)| !e.trim().is_empty()) {
            let mut parts = entry.trim().splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(AuthError::ApiKeyEntry(i + 1));
            };
            let role: Role = role.parse().map_err(|_| AuthError::ApiKeyEntry(i + 1))?;
            let hash: [u8; 32] = hex::decode(hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or(AuthError::ApiKeyEntry(i + 1))?;
            api_keys.insert(
                hash,
                Principal {
                    subject: name.to_string(),
                    role,
                },
            );
        }
        if verifiers.is_empty() && api_keys.is_empty() {
            return Err(AuthError::NotConfigured);
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[&self.issuer]);
            v.set_audience(&[&self.audience]);
            v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            v.leeway = 30;
            v
        };
        Ok(Arc::new(Authenticator {
            verifiers,
            hs256: validation(Algorithm::HS256),
            rs256: validation(Algorithm::RS256),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            signing,
            api_keys,
        }))
    }
}

/// A new API key for `name` with `role`: the key to hand to the client once, and the
/// `name:role:sha256` entry to configure.
pub fn new_api_key(name: &str, role: Role) -> (String, String) {
    let secret: [u8; 24] = rand::random();
    let key = format!("{API_KEY_PREFIX}{name}_{}", hex::encode(secret));
    let entry = format!(
        "{name}:{}:{}",
        role.as_str(),
        hex::encode(Sha256::digest(key.as_bytes()))
    );
    (key, entry)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    /// A signed HS256 token for `subject` with `role`, valid for `ttl`.
    pub fn issue(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, AuthError> {
        let iat = now_secs();
        self.sign(&Claims {
            sub: subject.to_string(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat,
            exp: iat + ttl.as_secs(),
        })
    }

    /// A signed HS256 token with exactly these claims (tests make expired ones with it).
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let key = self.signing.as_ref().ok_or(AuthError::CannotIssue)?;
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key)?)
    }

    /// The principal a bearer token names, or why it is refused.
    pub fn verify_token(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_string())?;
        let mut last = "no key accepts this token's algorithm".to_string();
        for verifier in &self.verifiers {
            let (key, alg) = match verifier {
                Verifier::Single(key, alg) if *alg == header.alg => (key, *alg),
                Verifier::KeySet(keys) if header.alg == Algorithm::RS256 => {
                    match header.kid.as_deref().and_then(|k| keys.get(k)) {
                        Some(key) => (key, Algorithm::RS256),
                        None => continue,
                    }
                }
                _ => continue,
            };
            let validation = if alg == Algorithm::HS256 {
                &self.hs256
            } else {
                &self.rs256
            };
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) if !data.claims.sub.is_empty() && data.claims.sub.len() <= 128 => {
                    return Ok(Principal {
                        subject: data.claims.sub,
                        role: data.claims.role,
                    })
                }
                Ok(_) => last = "the token's subject is empty or too long".into(),
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired".into(),
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad token signature".into(),
                        jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong token issuer".into(),
                        jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong token audience".into(),
                        _ => "invalid token".into(),
                    }
                }
            }
        }
        Err(last)
    }

    /// The principal an API key names.
    pub fn verify_api_key(&self, key: &str) -> Option<Principal> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.api_keys.get(&hash).cloned()
    }
}

/// Middleware: attaches the caller's [`Principal`] when it sent valid credentials (a bearer
/// token or an API key), answers 401 when it sent bad ones, and lets anonymous requests
/// through (handlers decide). Cookies are ignored: the command API takes no session.
pub async fn authenticate(State(auth): State<Arc<Authenticator>>, req: Request, next: Next) -> Response {
    check(&auth, req, next, false).await
}

/// [`authenticate`], also taking the console's session cookie (query API only).
pub async fn authenticate_with_session(State(auth): State<Arc<Authenticator>>, req: Request, next: Next) -> Response {
    check(&auth, req, next, true).await
}

async fn check(auth: &Authenticator, mut req: Request, next: Next, session: bool) -> Response {
    let headers = req.headers();
    let principal = if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let Some(token) = token else {
            return challenge(
                Problem::unauthenticated("the Authorization header must be `Bearer <token>`"),
                Some("invalid_request"),
            );
        };
        match auth.verify_token(token) {
            Ok(p) => p,
            Err(why) => {
                metrics::counter!("surge_auth_failures_total", "kind" => "token").increment(1);
                return challenge(Problem::unauthenticated(why), Some("invalid_token"));
            }
        }
    } else if let Some(value) = headers.get(API_KEY_HEADER) {
        match value.to_str().ok().and_then(|k| auth.verify_api_key(k)) {
            Some(p) => p,
            None => {
                metrics::counter!("surge_auth_failures_total", "kind" => "api_key").increment(1);
                return challenge(Problem::unauthenticated("unknown API key"), None);
            }
        }
    } else if let Some(p) = session
        .then(|| cookie_token(headers))
        .flatten()
        .and_then(|t| auth.verify_token(t).ok())
    {
        p
    } else {
        return next.run(req).await;
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The console's session cookie, set by its login page (a bad or expired one is ignored, so
/// the page can ask for a new token).
pub const SESSION_COOKIE: &str = "surge_session";

fn cookie_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn issued_tokens_verify_and_carry_role_and_subject() {
        let auth = AuthConfig::hs256(SECRET).build().unwrap();
        let t = auth.issue("c-1", Role::Customer, Duration::from_secs(60)).unwrap();
        assert_eq!(
            auth.verify_token(&t).unwrap(),
            Principal {
                subject: "c-1".into(),
                role: Role::Customer
            }
        );
    }

    #[test]
    fn other_secret_expired_or_other_audience_is_refused() {
        let auth = AuthConfig::hs256(SECRET).build().unwrap();
        let other = AuthConfig::hs256("another-secret-another-secret-xx").build().unwrap();
        let t = other.issue("c-1", Role::Admin, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify_token(&t).unwrap_err(), "bad token signature");
        let mut cfg = AuthConfig::hs256(SECRET);
        cfg.audience = "elsewhere".into();
        let t = cfg
            .build()
            .unwrap()
            .issue("c-1", Role::Admin, Duration::from_secs(60))
            .unwrap();
        assert_eq!(auth.verify_token(&t).unwrap_err(), "wrong token audience");
        let expired = Claims {
            sub: "c-1".into(),
            role: Role::Admin,
            iss: "surge".into(),
            aud: "surge".into(),
            iat: now_secs() - 7200,
            exp: now_secs() - 3600,
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.verify_token(&t).unwrap_err(), "the token has expired");
        assert!(auth.verify_token("not.a.token").is_err());
    }

    #[test]
    fn api_keys_are_checked_by_hash() {
        let (key, entry) = new_api_key("storefront", Role::Service);
        assert!(!entry.contains(&key), "the entry holds only the hash");
        let auth = AuthConfig {
            api_keys: vec![entry],
            ..AuthConfig::default()
        }
        .build()
        .unwrap();
        assert_eq!(auth.verify_api_key(&key).unwrap().role, Role::Service);
        assert!(auth.verify_api_key("surge_storefront_00").is_none());
    }

    #[test]
    fn nothing_configured_or_a_weak_secret_refuses_to_start() {
        assert!(matches!(AuthConfig::default().build(), Err(AuthError::NotConfigured)));
        assert!(matches!(AuthConfig::hs256("short").build(), Err(AuthError::WeakSecret)));
    }

    #[test]
    fn customers_act_only_for_themselves_and_analysts_only_read() {
        let c = Principal {
            subject: "c-1".into(),
            role: Role::Customer,
        };
        assert!(c.may_act_for("c-1").is_ok());
        assert_eq!(c.may_act_for("c-2").unwrap_err().status, 403);
        assert_eq!(c.may_read("c-2").unwrap_err().status, 403);
        let a = Principal {
            subject: "ana".into(),
            role: Role::Analyst,
        };
        assert!(a.may_read("c-2").is_ok());
        assert_eq!(a.may_act_for("c-2").unwrap_err().status, 403);
        assert_eq!(a.require(&[Role::Admin]).unwrap_err().status, 403);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let config = AuthConfig::hs256(SECRET);
        assert!(!format!("{config:?}").contains(SECRET));
        assert_eq!(config.expose_jwt_secret(), Some(SECRET));
    }

    #[test]
    fn an_empty_secret_refuses_to_start_and_says_which_setting() {
        let err = AuthConfig::hs256("").build().err().expect("an empty secret is refused");
        assert!(matches!(err, AuthError::WeakSecret));
        assert!(err.to_string().contains("SURGE_JWT_SECRET"));
    }

    #[test]
    fn the_default_checks_the_command_line_issuer_and_audience() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            auth: AuthConfig,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["surge"]).unwrap().auth;
        let default = AuthConfig::default();
        if std::env::var_os("SURGE_JWT_ISSUER").is_none() && std::env::var_os("SURGE_JWT_AUDIENCE").is_none() {
            assert_eq!((parsed.issuer, parsed.audience), (default.issuer, default.audience));
        }
    }
}
