//! Properties every input must keep, whatever its bytes: shared by the `cargo fuzz` targets
//! (`fuzz/`) and the tests that replay their committed corpora, so both check the same thing.

use crate::{decode, EventEnvelope, InventoryEvent, OrderEvent};

/// Bytes from the wire (a Kafka message, an export line): an error or an envelope, never a
/// panic; an envelope decodes (with upcasting) or is refused; what decodes survives a round trip.
/// True when the bytes were an envelope with a typed event in it.
pub fn wire_bytes(data: &[u8]) -> bool {
    let Ok(env) = EventEnvelope::from_json(data) else {
        return false;
    };
    let order = decode::<OrderEvent>(&env);
    let inventory = decode::<InventoryEvent>(&env);
    assert!(
        order.is_err() || inventory.is_err(),
        "a payload belongs to one stream type"
    );
    let again = EventEnvelope::from_json(&env.to_json()).expect("an envelope we wrote decodes");
    assert_eq!(again, env, "the wire form round-trips");
    order.is_ok() || inventory.is_ok()
}

#[cfg(test)]
mod tests {
    /// The committed corpus (seeds and whatever the fuzzer kept) still keeps the invariants.
    #[test]
    fn the_committed_wire_corpus_keeps_the_invariants() {
        // The directory of the `cargo test` run (cargo sets it at run time too): a test binary
        // built from another checkout sharing the target directory keeps that checkout's path.
        let dir = format!(
            "{}/../fuzz/corpus/wire_envelope",
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
        );
        let (mut files, mut typed) = (0, 0);
        for entry in std::fs::read_dir(dir).expect("corpus committed") {
            let data = std::fs::read(entry.expect("readable entry").path()).expect("readable file");
            files += 1;
            typed += usize::from(super::wire_bytes(&data));
        }
        assert!(files >= 10, "{files} corpus files");
        assert!(typed >= 9, "every event type of the seeds decodes ({typed} did)");
    }
}
