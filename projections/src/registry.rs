//! The views the projector keeps. Adding a view is a migration (its tables), a file with its
//! [`View`](crate::view::View) and one line in [`ALL`].

use crate::view::Projection;
use crate::{catalog, orders};

/// Every registered view, in the order `--projection`'s help and the console list them.
pub const ALL: &[Projection] = &[Projection::of(&catalog::Catalog), Projection::of(&orders::Orders)];

impl Projection {
    /// Every registered view.
    pub const ALL: &'static [Projection] = ALL;

    /// The registered view called `name`.
    pub fn named(name: &str) -> Option<Projection> {
        ALL.iter().copied().find(|p| p.name() == name)
    }
}

impl clap::ValueEnum for Projection {
    fn value_variants<'a>() -> &'a [Self] {
        ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl<'de> serde::Deserialize<'de> for Projection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Projection::named(&name).ok_or_else(|| {
            let known: Vec<&str> = ALL.iter().map(|p| p.name()).collect();
            serde::de::Error::custom(format!("unknown projection {name:?}, expected one of {known:?}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_tables_are_unique() {
        let names: HashSet<&str> = ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), ALL.len());
        let tables: Vec<&str> = ALL.iter().flat_map(|p| p.tables().iter().copied()).collect();
        assert_eq!(tables.iter().collect::<HashSet<_>>().len(), tables.len());
        for p in ALL {
            assert_eq!(Projection::named(p.name()), Some(*p));
        }
        assert_eq!(Projection::named("nope"), None);
    }

    #[test]
    fn a_projection_deserializes_by_name_only() {
        let p: Projection = serde_json::from_str("\"orders\"").unwrap();
        assert_eq!(p.name(), "orders");
        let e = serde_json::from_str::<Projection>("\"ordres\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown projection"), "{e}");
    }
}
