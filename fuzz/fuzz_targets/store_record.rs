//! Values read back from the store file: a room record, an attribute, a stored message, the
//! app-wide policy and the format version, each postcard-encoded. A damaged file must give an
//! error, never a panic.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use roomcast::policy::GlobalPolicy;
use roomcast::store::{AttrRecord, RoomRecord, StoredMessage};

fn record<T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug>(
    data: &[u8],
) {
    if let Ok(v) = postcard::from_bytes::<T>(data) {
        common::round_trip(&v);
    }
}

fuzz_target!(|data: &[u8]| {
    record::<RoomRecord>(data);
    record::<AttrRecord>(data);
    record::<StoredMessage>(data);
    record::<GlobalPolicy>(data);
    let _ = postcard::from_bytes::<u32>(data);
});
