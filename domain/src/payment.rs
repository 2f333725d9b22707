//! Payment tokens: what the checkout may send, and what it must never send (a card number);
//! and what becomes of a charge the gateway captured.

use crate::error::DomainError;
use crate::status::OrderStatus;

/// What becomes of a charge the gateway captured, given where the order stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapturedCharge {
    /// The order awaits this payment: confirm it, selling the held stock.
    Confirm,
    /// The order recorded it already (an earlier settlement whose reply was lost).
    AlreadyRecorded,
    /// The order can no longer take it: the money goes back to the customer.
    Refund,
}

pub fn on_captured_charge(status: OrderStatus) -> CapturedCharge {
    match status {
        OrderStatus::PaymentPending => CapturedCharge::Confirm,
        OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Refunded => CapturedCharge::AlreadyRecorded,
        OrderStatus::New | OrderStatus::Placed | OrderStatus::PaymentFailed | OrderStatus::Cancelled => {
            CapturedCharge::Refund
        }
    }
}

/// How a submitted payment ended, as the gateway said it definitely did.
#[derive(Debug, Clone)]
pub enum Settlement {
    Paid { reference: String },
    Failed { reason: String },
}

/// What recording a settlement came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Recorded now or before: the payment is over.
    Recorded,
    /// The charge was captured but the order can no longer take it: it must be refunded.
    MustRefund { reference: String, reason: String },
}

/// A payment token from the payment provider's client SDK: `tok_` and 4 to 64 characters of
/// `[A-Za-z0-9_-]`. Anything that looks like a card number (PAN) is refused and never stored.
pub fn check_token(token: &str) -> Result<(), DomainError> {
    if looks_like_pan(token) {
        return Err(DomainError::CardNumberRejected);
    }
    let valid = token.strip_prefix("tok_").is_some_and(|rest| {
        (4..=64).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    if valid {
        Ok(())
    } else {
        Err(DomainError::InvalidPaymentToken)
    }
}

/// 12 to 19 digits, possibly grouped by spaces or dashes, anywhere in the string: we refuse
/// without checking Luhn, since a mistyped card number is still a card number.
pub fn looks_like_pan(s: &str) -> bool {
    let mut run = 0;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= 12 {
                return true;
            }
        } else if c != ' ' && c != '-' {
            run = 0;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_gateway_tokens() {
        assert_eq!(check_token("tok_visa_4242"), Ok(()));
        assert_eq!(check_token("tok_ABC-def_123"), Ok(()));
    }

    #[test]
    fn refuses_card_numbers_in_any_shape() {
        for pan in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "tok_4111111111111111",
            "371449635398431",
        ] {
            assert_eq!(check_token(pan), Err(DomainError::CardNumberRejected), "{pan}");
        }
    }

    #[test]
    fn a_captured_charge_is_kept_only_by_an_order_awaiting_it() {
        assert_eq!(on_captured_charge(OrderStatus::PaymentPending), CapturedCharge::Confirm);
        assert_eq!(on_captured_charge(OrderStatus::Paid), CapturedCharge::AlreadyRecorded);
        assert_eq!(
            on_captured_charge(OrderStatus::Refunded),
            CapturedCharge::AlreadyRecorded
        );
        for gone in [OrderStatus::Cancelled, OrderStatus::PaymentFailed] {
            assert_eq!(on_captured_charge(gone), CapturedCharge::Refund, "{gone}");
        }
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "",
            "tok_",
            "tok_a",
            "visa",
            "tok_has space",
            &format!("tok_{}", "a".repeat(65)),
        ] {
            assert_eq!(check_token(bad), Err(DomainError::InvalidPaymentToken), "{bad}");
        }
    }
}
