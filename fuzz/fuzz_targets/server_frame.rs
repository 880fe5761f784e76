//! The control stream as the client library reads it: length-prefixed `ServerFrame`s (welcome,
//! refusal, replies).

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::ServerFrame;

fuzz_target!(|data: &[u8]| {
    common::frames::<ServerFrame>(data, common::MAX_FRAME);
    common::body::<ServerFrame>(data);
});
