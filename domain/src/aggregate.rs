//! The shape every aggregate has: decide a command on the state, evolve the state by an event.

use crate::error::DomainError;
use surge_events::Payload;

/// An event-sourced aggregate: state folded from its stream's events.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    type Command;
    type Event: Payload;

    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, DomainError>;
    fn evolve(&mut self, event: &Self::Event);

    /// The state after `events`, from the empty state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.evolve(e);
        }
        state
    }
}
