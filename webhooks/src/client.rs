//! The HTTP client deliveries go out through, hardened against SSRF and slow receivers:
//! it connects only to addresses the [`UrlPolicy`] permits (a resolver that drops the others,
//! so a name re-pointed at 127.0.0.1 after registration, DNS rebinding, gets nowhere; literal
//! addresses are checked before the request), follows no redirect, uses no proxy from the
//! environment, bounds connect and total time, and reads at most [`RESPONSE_BODY_LIMIT`] bytes
//! of an answer.

use crate::address::{literal_ip, AddressRefused, UrlPolicy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The most of a response body ever read (kept for the delivery's `last_error`).
pub const RESPONSE_BODY_LIMIT: usize = 4 * 1024;

/// Resolves with the system resolver, then keeps only the addresses the policy permits.
struct PolicyResolver {
    policy: Arc<UrlPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.permits(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match refused {
                Some(refused) if permitted.is_empty() => Err(Box::new(refused) as _),
                _ => Ok(Box::new(permitted.into_iter()) as Addrs),
            }
        })
    }
}

/// The headers of one attempt, besides the content type.
pub struct Signed<'a> {
    pub signature: &'a str,
    pub event_id: &'a str,
    pub delivery_id: &'a str,
    pub attempt: i32,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The receiver answered (any status); `head` is the start of its body, at most the limit.
    Status { status: u16, head: String },
    /// The policy refused every address of the URL's host: nothing was sent.
    Refused(AddressRefused),
    /// Nothing usable came back: timeout, connection refused or reset, TLS failure.
    Failed(String),
}

#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    policy: Arc<UrlPolicy>,
}

impl WebhookClient {
    pub fn new(policy: UrlPolicy, connect_timeout: Duration, timeout: Duration) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .dns_resolver(Arc::new(PolicyResolver { policy: policy.clone() }))
            .https_only(!policy.allow_http)
            .build()?;
        Ok(WebhookClient { http, policy })
    }

    /// POSTs `body` to `url` with the signature headers; never follows a redirect, never reads
    /// more than [`RESPONSE_BODY_LIMIT`] of the answer.
    pub async fn post(&self, url: &str, signed: &Signed<'_>, body: String) -> Answer {
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return Answer::Failed(format!("bad URL: {e}")),
        };
        if let Some(ip) = parsed.host_str().and_then(literal_ip) {
            // A literal address is never resolved: checked here instead.
            if let Err(refused) = self.policy.permits(ip) {
                return Answer::Refused(refused);
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static("Surge-Webhooks/1"));
        for (name, value) in [
            ("surge-signature", signed.signature.to_string()),
            ("surge-event-id", signed.event_id.to_string()),
            ("surge-delivery-id", signed.delivery_id.to_string()),
            ("surge-attempt", signed.attempt.to_string()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        let response = match self.http.post(parsed).headers(headers).body(body).send().await {
            Ok(r) => r,
            Err(e) => return failure(&e),
        };
        let status = response.status().as_u16();
        Answer::Status {
            status,
            head: read_head(response).await,
        }
    }
}

/// Up to [`RESPONSE_BODY_LIMIT`] bytes of the body, as text; the rest is never read (the
/// connection is dropped with it).
async fn read_head(mut response: reqwest::Response) -> String {
    let mut head = Vec::new();
    while head.len() < RESPONSE_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_BODY_LIMIT - head.len();
                head.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A send error as an answer: the policy's refusal if that is what it was.
fn failure(e: &reqwest::Error) -> Answer {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<AddressRefused>() {
            return Answer::Refused(refused.clone());
        }
        source = s.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    // The chain's innermost cause says the most (connection refused, certificate unknown).
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    Answer::Failed(format!("{kind}: {cause}"))
}
