//! Shared by the fuzz targets: reading frames off a byte stream without a runtime, and the
//! round-trip check every decoded value must pass.

#![allow(dead_code)]

use roomcast::protocol::{DecodeError, FrameReader, decode_body, encode_frame};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// The largest frame the relay accepts by default.
pub const MAX_FRAME: u32 = 64 * 1024;

/// Drives a future that never waits (it reads from a byte slice) to its end.
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("a read from a byte slice never waits"),
    }
}

/// Every frame of `data` read as a stream of length-prefixed frames of at most `max` bytes, as
/// the relay and the client read their streams: until the stream ends or a frame is refused.
pub fn frames<T: DeserializeOwned + Serialize + PartialEq + Debug>(data: &[u8], max: u32) {
    let mut reader = FrameReader::new(data, max);
    loop {
        match now(reader.read::<T>()) {
            Ok(Some(v)) => round_trip(&v),
            Ok(None) => return,
            Err(DecodeError::TooLarge { len, max: m }) => {
                assert!(len > m, "refused a frame of {len} bytes within the limit {m}");
                return;
            }
            Err(_) => return,
        }
    }
}

/// A decoded value encodes to a frame that decodes to the same value.
pub fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(v: &T) {
    let frame = encode_frame(v);
    let back: T = decode_body(&frame[4..]).expect("an encoded value decodes");
    assert_eq!(&back, v, "round trip changed the value");
}

/// `data` as one frame body (or datagram): decoded, and if it decodes, round-tripped.
pub fn body<T: DeserializeOwned + Serialize + PartialEq + Debug>(data: &[u8]) {
    if let Ok(v) = decode_body::<T>(data) {
        round_trip(&v);
    }
}
