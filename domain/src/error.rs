//! The refusals of the rules, and the bounds they enforce.

use crate::status::OrderStatus;
use surge_events::{OrderId, Sku};

/// A business rule said no. Each variant maps to a 422 (or 404/409) problem with a stable type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("quantity must be between 1 and {max}, got {quantity}")]
    InvalidQuantity { quantity: i64, max: i64 },
    #[error("{field} is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("item {sku} does not exist")]
    UnknownItem { sku: Sku },
    #[error("item {sku} already exists")]
    ItemAlreadyExists { sku: Sku },
    #[error("only {available} of {sku} available, {requested} requested")]
    OutOfStock { sku: Sku, requested: i64, available: i64 },
    #[error("order {order_id} already holds stock of {sku}")]
    AlreadyReserved { sku: Sku, order_id: OrderId },
    #[error("order {order_id} holds no stock of {sku}")]
    NoReservation { sku: Sku, order_id: OrderId },
    #[error("the reservation of order {order_id} on {sku} is not due yet")]
    ReservationNotDue { sku: Sku, order_id: OrderId },
    #[error("order {0} does not exist")]
    UnknownOrder(OrderId),
    #[error("order {0} already exists")]
    OrderAlreadyExists(OrderId),
    #[error("an order needs 1 to {max} lines, got {count}")]
    InvalidLineCount { count: usize, max: usize },
    #[error("every line of an order must be priced in one currency")]
    MixedCurrencies,
    #[error("amount overflows")]
    AmountOverflow,
    #[error("card numbers are not accepted: send the payment provider's token")]
    CardNumberRejected,
    #[error("payment token must be tok_ followed by 4 to 64 letters, digits, '_' or '-'")]
    InvalidPaymentToken,
    #[error("a customer may hold at most {limit} of {sku}: {held} held already, {requested} requested")]
    PurchaseLimit {
        sku: Sku,
        limit: i64,
        held: i64,
        requested: i64,
    },
    #[error("buckets must be between 1 and {max}, got {buckets}")]
    InvalidBuckets { buckets: i64, max: u32 },
    #[error("max_per_customer must be between 1 and {max} (or null for no limit), got {value}")]
    InvalidPurchaseLimit { value: i64, max: i64 },
    #[error("cannot {action} an order that is {status}")]
    InvalidTransition { action: &'static str, status: OrderStatus },
}

impl DomainError {
    /// The stable slug of the problem `type` this error is answered with.
    pub fn slug(&self) -> &'static str {
        match self {
            DomainError::InvalidQuantity { .. } => "invalid-quantity",
            DomainError::InvalidField { .. } => "invalid-field",
            DomainError::UnknownItem { .. } => "unknown-item",
            DomainError::ItemAlreadyExists { .. } => "item-exists",
            DomainError::OutOfStock { .. } => "out-of-stock",
            DomainError::AlreadyReserved { .. } => "already-reserved",
            DomainError::NoReservation { .. } => "no-reservation",
            DomainError::ReservationNotDue { .. } => "reservation-not-due",
            DomainError::UnknownOrder(_) => "unknown-order",
            DomainError::OrderAlreadyExists(_) => "order-exists",
            DomainError::InvalidLineCount { .. } => "invalid-line-count",
            DomainError::MixedCurrencies => "mixed-currencies",
            DomainError::AmountOverflow => "amount-overflow",
            DomainError::CardNumberRejected => "card-number-rejected",
            DomainError::InvalidPaymentToken => "invalid-payment-token",
            DomainError::InvalidTransition { .. } => "invalid-transition",
            DomainError::PurchaseLimit { .. } => "purchase-limit",
            DomainError::InvalidBuckets { .. } => "invalid-buckets",
            DomainError::InvalidPurchaseLimit { .. } => "invalid-purchase-limit",
        }
    }
}

/// Bounds shared by the rules and the API's validation.
pub const MAX_QUANTITY: i64 = 10_000;
pub const MAX_RESTOCK: i64 = 1_000_000_000;
pub const MAX_LINES: usize = 50;
/// Most stock buckets an item may be split into.
pub const MAX_BUCKETS: u32 = 64;
