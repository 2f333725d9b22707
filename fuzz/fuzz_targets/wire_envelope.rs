//! Arbitrary bytes as a Kafka message or an export line: decoded, upcast, round-tripped.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    surge_events::invariants::wire_bytes(data);
});
