//! Arbitrary bytes as the body of any command route: decoded, then decided by the aggregates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| surge_command::invariants::command_body(data));
