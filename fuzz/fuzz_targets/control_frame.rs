//! The control stream as the relay reads it: length-prefixed `ClientFrame`s (hello and requests).

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::ClientFrame;

fuzz_target!(|data: &[u8]| {
    common::frames::<ClientFrame>(data, common::MAX_FRAME);
    common::body::<ClientFrame>(data);
});
