//! Identifiers, validated when they are made so that the rest of the code can trust them.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("SKU must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' or '.'")]
    InvalidSku,
    #[error("customer id must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.' or '@'")]
    InvalidCustomer,
}

fn valid_token(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || extra.contains(&c))
}

/// A stock-keeping unit: the identity of a sellable item and of its inventory stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if valid_token(&s, &[]) {
            Ok(Sku(s))
        } else {
            Err(IdError::InvalidSku)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The stream of the item's bucket 0: its catalog entry, its settings and that bucket's stock.
    pub fn stream_id(&self) -> StreamId {
        StreamId(format!("inventory-{}", self.0))
    }

    /// The stream of one of the item's stock buckets: bucket 0 is [`Sku::stream_id`], bucket
    /// `k >= 1` is `inventory-<sku>#<k>` (a SKU never contains `#`, so the two cannot clash).
    pub fn bucket_stream_id(&self, bucket: u32) -> StreamId {
        if bucket == 0 {
            self.stream_id()
        } else {
            StreamId(format!("inventory-{}#{bucket}", self.0))
        }
    }
}

impl TryFrom<String> for Sku {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Sku::parse(s)
    }
}
impl From<Sku> for String {
    fn from(s: Sku) -> String {
        s.0
    }
}
impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The customer an order belongs to (the `sub` of their token once auth exists).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if valid_token(&s, &['@']) {
            Ok(CustomerId(s))
        } else {
            Err(IdError::InvalidCustomer)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for CustomerId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        CustomerId::parse(s)
    }
}
impl From<CustomerId> for String {
    fn from(s: CustomerId) -> String {
        s.0
    }
}
impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An order's identity; UUIDv7 so that ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub Uuid);

impl OrderId {
    pub fn new() -> Self {
        OrderId(Uuid::now_v7())
    }
    pub fn stream_id(&self) -> StreamId {
        StreamId(format!("order-{}", self.0))
    }
}
impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}
impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of one event stream: `order-<uuid>` or `inventory-<sku>`. It is the Kafka message key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(pub String);

impl StreamId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the stream is of, read from its id (the one place that knows the `inventory-` and
    /// `order-` prefixes besides [`Sku::stream_id`] and [`OrderId::stream_id`]); `None` for an
    /// id that names neither a valid SKU nor an order's UUID.
    ///
    /// Every stock bucket of an item is a stream of that item: `inventory-<sku>#<k>` parses to
    /// the item's SKU as `inventory-<sku>` does ([`StreamId::inventory_bucket`] tells which bucket).
    pub fn parse(&self) -> Option<StreamOf> {
        if self.0.starts_with("inventory-") {
            self.inventory_bucket().map(|(sku, _)| StreamOf::Inventory(sku))
        } else if let Some(id) = self.0.strip_prefix("order-") {
            id.parse().ok().map(|id| StreamOf::Order(OrderId(id)))
        } else {
            None
        }
    }
}

impl StreamId {
    /// The item and the stock bucket of an inventory stream: `inventory-<sku>` is bucket 0,
    /// `inventory-<sku>#<k>` bucket `k` (k >= 1, written without leading zeros); `None` for
    /// anything else.
    pub fn inventory_bucket(&self) -> Option<(Sku, u32)> {
        let rest = self.0.strip_prefix("inventory-")?;
        match rest.split_once('#') {
            None => Sku::parse(rest).ok().map(|sku| (sku, 0)),
            Some((sku, k)) => {
                let bucket: u32 = k.parse().ok()?;
                let canonical = bucket >= 1 && k == bucket.to_string();
                canonical.then_some(())?;
                Sku::parse(sku).ok().map(|sku| (sku, bucket))
            }
        }
    }
}

/// What a stream holds the events of, as [`StreamId::parse`] reads it from the stream's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamOf {
    Inventory(Sku),
    Order(OrderId),
}
impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn string_schema(pattern: &str, description: &str) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "pattern": pattern, "description": description })
}

impl schemars::JsonSchema for Sku {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Sku".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        string_schema("^[A-Za-z0-9._-]{1,64}$", "A stock-keeping unit")
    }
}

impl schemars::JsonSchema for CustomerId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CustomerId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        string_schema("^[A-Za-z0-9._@-]{1,64}$", "The customer an order belongs to")
    }
}

impl schemars::JsonSchema for OrderId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OrderId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "uuid", "description": "An order's id (UUIDv7)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_rejects_empty_long_and_odd_characters() {
        assert!(Sku::parse("SKU-1").is_ok());
        assert_eq!(Sku::parse(""), Err(IdError::InvalidSku));
        assert_eq!(Sku::parse("a".repeat(65)), Err(IdError::InvalidSku));
        assert_eq!(Sku::parse("a b"), Err(IdError::InvalidSku));
        assert_eq!(Sku::parse("a/b"), Err(IdError::InvalidSku));
    }

    #[test]
    fn sku_deserialization_validates() {
        assert!(serde_json::from_str::<Sku>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<Sku>("\"not ok\"").is_err());
    }

    #[test]
    fn stream_ids_name_their_type() {
        assert_eq!(Sku::parse("X1").unwrap().stream_id().as_str(), "inventory-X1");
        assert!(OrderId::new().stream_id().as_str().starts_with("order-"));
    }

    #[test]
    fn bucket_streams_are_streams_of_their_item() {
        let sku = Sku::parse("X1").unwrap();
        assert_eq!(sku.bucket_stream_id(0), sku.stream_id());
        assert_eq!(sku.bucket_stream_id(2).as_str(), "inventory-X1#2");
        assert_eq!(sku.bucket_stream_id(2).parse(), Some(StreamOf::Inventory(sku.clone())));
        assert_eq!(sku.bucket_stream_id(2).inventory_bucket(), Some((sku.clone(), 2)));
        assert_eq!(sku.stream_id().inventory_bucket(), Some((sku, 0)));
        assert_eq!(Sku::parse("a#1"), Err(IdError::InvalidSku));
    }

    #[test]
    fn stream_ids_parse_back_to_what_they_are_of() {
        let sku = Sku::parse("X1").unwrap();
        assert_eq!(sku.stream_id().parse(), Some(StreamOf::Inventory(sku)));
        let order = OrderId::new();
        assert_eq!(order.stream_id().parse(), Some(StreamOf::Order(order)));
        for odd in [
            "inventory-",
            "inventory-a b",
            "inventory-X1#",
            "inventory-X1#0",
            "inventory-X1#01",
            "inventory-X1#-1",
            "inventory-X1#1#2",
            "inventory-#1",
            "order-",
            "order-not-a-uuid",
            "payment-1",
            "X1",
        ] {
            assert_eq!(StreamId(odd.into()).parse(), None, "{odd}");
        }
    }
}
