//! Money in integer minor units with an ISO 4217 currency code. No floats anywhere.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("currency must be a three-letter upper-case ISO 4217 code")]
    InvalidCurrency,
    #[error("amount must not be negative")]
    Negative,
    #[error("amounts in different currencies cannot be added")]
    CurrencyMismatch,
    #[error("amount overflows")]
    Overflow,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn parse(s: impl Into<String>) -> Result<Self, MoneyError> {
        let s = s.into();
        if s.len() == 3 && s.chars().all(|c| c.is_ascii_uppercase()) {
            Ok(Currency(s))
        } else {
            Err(MoneyError::InvalidCurrency)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, MoneyError> {
        Currency::parse(s)
    }
}
impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.0
    }
}

/// A non-negative amount of money: `minor` units (cents) of `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "MoneyRepr", into = "MoneyRepr")]
pub struct Money {
    minor: i64,
    currency: Currency,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyRepr {
    minor: i64,
    currency: Currency,
}

impl TryFrom<MoneyRepr> for Money {
    type Error = MoneyError;
    fn try_from(r: MoneyRepr) -> Result<Self, MoneyError> {
        Money::new(r.minor, r.currency)
    }
}
impl From<Money> for MoneyRepr {
    fn from(m: Money) -> Self {
        MoneyRepr {
            minor: m.minor,
            currency: m.currency,
        }
    }
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Money { minor, currency })
    }
    pub fn zero(currency: Currency) -> Self {
        Money { minor: 0, currency }
    }
    pub fn minor(&self) -> i64 {
        self.minor
    }
    pub fn currency(&self) -> &Currency {
        &self.currency
    }
    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch);
        }
        let minor = self.minor.checked_add(other.minor).ok_or(MoneyError::Overflow)?;
        Ok(Money {
            minor,
            currency: self.currency.clone(),
        })
    }
    pub fn checked_mul(&self, qty: i64) -> Result<Money, MoneyError> {
        if qty < 0 {
            return Err(MoneyError::Negative);
        }
        let minor = self.minor.checked_mul(qty).ok_or(MoneyError::Overflow)?;
        Ok(Money {
            minor,
            currency: self.currency.clone(),
        })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:02} {}",
            self.minor / 100,
            self.minor % 100,
            self.currency.as_str()
        )
    }
}

impl schemars::JsonSchema for Currency {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Currency".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217 code" })
    }
}

impl schemars::JsonSchema for Money {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Money".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "A non-negative amount in minor units of a currency",
            "properties": {
                "minor": { "type": "integer", "minimum": 0 },
                "currency": { "type": "string", "pattern": "^[A-Z]{3}$" }
            },
            "required": ["minor", "currency"],
            "additionalProperties": false
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
    }

    #[test]
    fn rejects_negative_and_bad_currency() {
        assert_eq!(
            Money::new(-1, Currency::parse("EUR").unwrap()),
            Err(MoneyError::Negative)
        );
        assert_eq!(Currency::parse("eur"), Err(MoneyError::InvalidCurrency));
        assert_eq!(Currency::parse("EURO"), Err(MoneyError::InvalidCurrency));
        assert!(serde_json::from_str::<Money>(r#"{"minor":-5,"currency":"EUR"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"minor":5,"currency":"EUR","x":1}"#).is_err());
    }

    #[test]
    fn adds_same_currency_only_and_never_overflows() {
        assert_eq!(eur(150).checked_add(&eur(250)).unwrap(), eur(400));
        let usd = Money::new(1, Currency::parse("USD").unwrap()).unwrap();
        assert_eq!(eur(1).checked_add(&usd), Err(MoneyError::CurrencyMismatch));
        assert_eq!(eur(i64::MAX).checked_add(&eur(1)), Err(MoneyError::Overflow));
        assert_eq!(eur(i64::MAX).checked_mul(2), Err(MoneyError::Overflow));
        assert_eq!(eur(250).checked_mul(3).unwrap(), eur(750));
    }

    #[test]
    fn displays_major_units() {
        assert_eq!(eur(1999).to_string(), "19.99 EUR");
    }
}
