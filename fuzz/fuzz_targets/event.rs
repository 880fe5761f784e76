//! The delivery stream as the client library reads it: length-prefixed `Event`s.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::Event;

fuzz_target!(|data: &[u8]| {
    // Admin messages may carry up to 128 KiB: events are read with a larger limit.
    common::frames::<Event>(data, 256 * 1024);
});
