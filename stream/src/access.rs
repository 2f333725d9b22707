//! Who may read: the clients' `authorization: Basic base64(user:password)` checked against
//! Surge's API keys (user = the key's name, password = the key), role analyst or admin.
//!
//! As a KurrentDB node answers: no or bad credentials are `Unauthenticated`, a role that may
//! not read is `PermissionDenied` (clients report both as access denied).

use base64::Engine;
use std::sync::Arc;
use surge_runtime::auth::Authenticator;
use surge_runtime::{Principal, Role};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The roles that may read the log through the stream API.
pub const READER_ROLES: [Role; 2] = [Role::Analyst, Role::Admin];

#[derive(Clone)]
pub struct Access {
    auth: Arc<Authenticator>,
}

impl Access {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Access { auth }
    }

    /// The caller, if its credentials are good and its role may read.
    pub fn reader(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let principal = self.authenticate(metadata)?;
        if READER_ROLES.contains(&principal.role) {
            Ok(principal)
        } else {
            tracing::info!(subject = %principal.subject, role = principal.role.as_str(), "stream API: role may not read");
            Err(Status::permission_denied(format!(
                "role {} may not read the event log (needs analyst or admin)",
                principal.role.as_str()
            )))
        }
    }

    /// The caller named by the Basic credentials, or `Unauthenticated`.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let value = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("send credentials: user = API key name, password = API key"))?;
        let (name, key) = value
            .to_str()
            .ok()
            .and_then(basic_credentials)
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        match self.auth.verify_api_key(&key) {
            Some(principal) if principal.subject == name => Ok(principal),
            _ => {
                tracing::info!(user = %name, "stream API: bad credentials");
                Err(Status::unauthenticated("bad credentials"))
            }
        }
    }
}

/// `(user, password)` of a `Basic base64(user:password)` header value.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use surge_runtime::auth::new_api_key;
    use surge_runtime::AuthConfig;

    fn access_with(entries: Vec<String>) -> Access {
        let config = AuthConfig {
            api_keys: entries,
            ..AuthConfig::default()
        };
        Access::new(config.build().unwrap())
    }

    fn basic(user: &str, password: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        m.insert("authorization", format!("Basic {v}").parse().unwrap());
        m
    }

    #[test]
    fn an_analyst_key_reads_and_a_service_key_is_denied() {
        let (analyst, a) = new_api_key("ana", Role::Analyst);
        let (service, s) = new_api_key("shop", Role::Service);
        let access = access_with(vec![a, s]);
        assert_eq!(access.reader(&basic("ana", &analyst)).unwrap().role, Role::Analyst);
        let denied = access.reader(&basic("shop", &service)).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn bad_or_missing_credentials_are_unauthenticated() {
        let (analyst, a) = new_api_key("ana", Role::Analyst);
        let access = access_with(vec![a]);
        for metadata in [
            MetadataMap::new(),
            basic("ana", "surge_ana_wrong"),
            basic("bob", &analyst),
            {
                let mut m = MetadataMap::new();
                m.insert("authorization", "Bearer x".parse().unwrap());
                m
            },
        ] {
            assert_eq!(
                access.reader(&metadata).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
    }

    #[test]
    fn a_password_may_hold_colons() {
        assert_eq!(
            basic_credentials("Basic dTpwOnE="),
            Some(("u".to_string(), "p:q".to_string()))
        );
    }
}
