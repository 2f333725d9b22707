//! What a storefront is told: the status changes an endpoint can choose ([`EventType`]) and
//! the JSON body sent for one order event ([`Notification`]). Pure: no I/O.

use serde::{Deserialize, Serialize};
use surge_events::order::CancelReason;
use surge_events::{decode, DecodeError, EventEnvelope, OrderEvent, OrderId, Payload, StreamType};
use utoipa::ToSchema;
use uuid::Uuid;

/// An order status change an endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "order.placed")]
    OrderPlaced,
    #[serde(rename = "order.paid")]
    OrderPaid,
    #[serde(rename = "order.payment_failed")]
    PaymentFailed,
    #[serde(rename = "order.cancelled")]
    OrderCancelled,
    #[serde(rename = "order.expired")]
    OrderExpired,
    #[serde(rename = "order.refunded")]
    OrderRefunded,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::OrderPlaced,
        EventType::OrderPaid,
        EventType::PaymentFailed,
        EventType::OrderCancelled,
        EventType::OrderExpired,
        EventType::OrderRefunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderPlaced => "order.placed",
            EventType::OrderPaid => "order.paid",
            EventType::PaymentFailed => "order.payment_failed",
            EventType::OrderCancelled => "order.cancelled",
            EventType::OrderExpired => "order.expired",
            EventType::OrderRefunded => "order.refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The status change an order event is, if it is one a storefront is told about
    /// (`PaymentSubmitted` and `OrderShipped` are not: the storefront caused the first, and
    /// shipping is not Surge's to announce yet).
    pub fn of(event: &OrderEvent) -> Option<Self> {
        match event {
            OrderEvent::OrderPlaced(_) => Some(EventType::OrderPlaced),
            OrderEvent::OrderPaid(_) => Some(EventType::OrderPaid),
            OrderEvent::PaymentFailed(_) => Some(EventType::PaymentFailed),
            OrderEvent::OrderCancelled(c) if c.reason == CancelReason::ReservationExpired => {
                Some(EventType::OrderExpired)
            }
            OrderEvent::OrderCancelled(_) => Some(EventType::OrderCancelled),
            OrderEvent::PaymentRefunded(_) => Some(EventType::OrderRefunded),
            OrderEvent::PaymentSubmitted(_) | OrderEvent::OrderShipped(_) => None,
        }
    }
}

/// The body of one delivery, as sent (and signed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// The event's id: the same on every retry and redelivery, so the receiver dedupes by it.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub order_id: OrderId,
    /// The order's version after this change (1 when placed): a receiver that stores it can
    /// tell an older change from a newer one.
    pub order_version: i64,
    /// The event's fields (current schema).
    pub data: serde_json::Value,
}

/// One order event as a storefront is told it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event_id: Uuid,
    pub event_type: EventType,
    pub order_id: OrderId,
    pub position: i64,
    /// The JSON sent, exactly these bytes.
    pub body: String,
}

impl Notification {
    /// The notification an event of the log makes; `None` for events storefronts are not told.
    pub fn of(env: &EventEnvelope) -> Result<Option<Self>, DecodeError> {
        if env.stream_type != StreamType::Order {
            return Ok(None);
        }
        let event: OrderEvent = decode(env)?;
        let Some(event_type) = EventType::of(&event) else {
            return Ok(None);
        };
        let body = Body {
            id: env.event_id,
            event_type,
            created_at: env.occurred_at,
            order_id: event.order_id(),
            order_version: env.version,
            data: event.to_stored_json(),
        };
        Ok(Some(Notification {
            event_id: env.event_id,
            event_type,
            order_id: event.order_id(),
            position: env.position,
            body: serde_json::to_string(&body).map_err(DecodeError::Envelope)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surge_events::order::{OrderCancelled, PaymentSubmitted};
    use surge_events::EventMetadata;

    fn envelope(event: &OrderEvent, version: i64) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            position: 42,
            stream_id: event.order_id().stream_id(),
            stream_type: StreamType::Order,
            version,
            event_type: event.event_type().to_string(),
            schema_version: event.schema_version(),
            occurred_at: chrono::Utc::now(),
            metadata: EventMetadata::new("test"),
            payload: event.to_stored_json(),
        }
    }

    #[test]
    fn cancellations_by_expiry_are_expiries() {
        let order_id = OrderId::new();
        for (reason, want) in [
            (CancelReason::ReservationExpired, EventType::OrderExpired),
            (CancelReason::CustomerRequest, EventType::OrderCancelled),
            (CancelReason::PaymentFailed, EventType::OrderCancelled),
        ] {
            let event = OrderEvent::OrderCancelled(OrderCancelled { order_id, reason });
            let n = Notification::of(&envelope(&event, 3)).unwrap().unwrap();
            assert_eq!(n.event_type, want);
            let body: Body = serde_json::from_str(&n.body).unwrap();
            assert_eq!(
                (body.order_id, body.order_version, body.event_type),
                (order_id, 3, want)
            );
            assert!(body.data.get("type").is_none(), "the tag lives in `type`, not in data");
        }
    }

    #[test]
    fn payment_submissions_are_not_announced() {
        let event = OrderEvent::PaymentSubmitted(PaymentSubmitted {
            order_id: OrderId::new(),
            token_fingerprint: "fp".into(),
        });
        assert_eq!(Notification::of(&envelope(&event, 2)).unwrap(), None);
    }

    #[test]
    fn event_type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()));
        }
        assert_eq!(EventType::parse("order.shipped"), None);
    }
}
