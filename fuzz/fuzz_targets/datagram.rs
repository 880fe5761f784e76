//! A QUIC datagram as the client library reads it: one `Event` with no length prefix.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::Event;

fuzz_target!(|data: &[u8]| {
    common::body::<Event>(data);
});
