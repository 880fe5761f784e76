//! Length-delimited postcard framing: `u32` big-endian length, then the body.

use super::ClientFrame;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix is larger than the reader's maximum; the body was not read.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A zero length prefix.
    #[error("empty frame")]
    Empty,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The body is not a valid encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// A well-formed request whose variant this server does not know (a newer client's): the
    /// frame was read whole, so the stream is still in step and the request can be refused by id.
    #[error("unknown request variant {variant} (request id {id})")]
    UnknownRequest {
        /// The request's id.
        id: u32,
        /// Its variant index.
        variant: u32,
    },
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `value` as one stream frame: length prefix and postcard body.
pub fn encode_frame<T: Serialize>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0; 4]);
    // Serializing into a Vec only fails on a type serde cannot express; ours are all plain data.
    let mut buf = postcard::to_extend(value, buf).unwrap_or_else(|_| vec![0; 4]);
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Bytes::from(buf)
}

/// Encodes `value` as a datagram payload: the postcard body without a length prefix.
pub fn encode_datagram<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(value).unwrap_or_default())
}

/// Decodes one frame body (or one datagram). Trailing bytes are an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ))
    }
}

/// How many variants [`Request`](super::Request) has: a request whose variant index is at least this is unknown
/// to this server. Raise it with every variant appended to [`Request`](super::Request).
pub const REQUEST_VARIANTS: u32 = 11;

/// Decodes a control-stream frame from a client.
///
/// A request of a variant this server does not know is [`DecodeError::UnknownRequest`] with its
/// id, so the server can refuse just that request and a newer client can probe for features: in
/// postcard, `ClientFrame::Request` is its variant index (1), the request id and then the
/// request's variant index, each a varint, so the id is known before the unknown part.
pub fn decode_client_frame(body: &[u8]) -> Result<ClientFrame, DecodeError> {
    decode_body(body).map_err(|e| match request_head(body) {
        Some((id, variant)) if variant >= REQUEST_VARIANTS => {
            DecodeError::UnknownRequest { id, variant }
        }
        _ => e,
    })
}

/// The id and variant index at the head of an encoded `ClientFrame::Request`.
fn request_head(body: &[u8]) -> Option<(u32, u32)> {
    let (frame, rest) = postcard::take_from_bytes::<u32>(body).ok()?;
    if frame != 1 {
        return None;
    }
    let (id, rest) = postcard::take_from_bytes::<u32>(rest).ok()?;
    let (variant, _) = postcard::take_from_bytes::<u32>(rest).ok()?;
    Some((id, variant))
}

/// The first frame of a control stream, read under the hello's own size rule
/// ([`FrameReader::read_hello`]).
#[derive(Debug, PartialEq)]
pub enum HelloFrame {
    /// A frame within the frame limit (a hello, or whatever the client sent first).
    Frame(ClientFrame),
    /// A hello over the frame limit, read and discarded: the length its token announced.
    Oversized {
        /// The token's length in bytes.
        token_len: u64,
    },
}

/// The token length of an encoded `ClientFrame::Hello`, from its first bytes: variant 0, the
/// version (a varint) and the token's length (a varint).
fn hello_token_len(head: &[u8]) -> Option<u64> {
    let (frame, rest) = postcard::take_from_bytes::<u32>(head).ok()?;
    if frame != 0 {
        return None;
    }
    let (_version, rest) = postcard::take_from_bytes::<u16>(rest).ok()?;
    let (token_len, _) = postcard::take_from_bytes::<u64>(rest).ok()?;
    Some(token_len)
}

/// A frame buffer larger than this is freed after its frame instead of kept for the next one.
const KEEP_BUFFER: usize = 16 * 1024;

/// Reads length-delimited frames from a byte stream, refusing oversized ones before reading them.
pub struct FrameReader<R> {
    inner: R,
    max: u32,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader that accepts bodies of at most `max` bytes.
    pub fn new(inner: R, max: u32) -> Self {
        FrameReader {
            inner,
            max,
            buf: Vec::new(),
        }
    }

    /// Changes the largest accepted body.
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    /// The next frame, `Ok(None)` at a clean end of stream (between frames).
    ///
    /// Not cancel-safe: a frame partly read when the future is dropped is lost and the stream is
    /// out of step. Read from a task of its own (as the server and client do) rather than in a
    /// `select!` branch that may lose.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, DecodeError> {
        self.read_with(decode_body).await
    }

    /// The first frame of a control stream, with the hello's own size rule: a frame over the
    /// limit of at most `skip_max` bytes that starts like a hello is read and discarded, never
    /// buffered, and reported as [`HelloFrame::Oversized`] with its token's length, so the server
    /// can refuse the token in words instead of closing on the frame size. Anything else over the
    /// limit is [`DecodeError::TooLarge`].
    pub async fn read_hello(&mut self, skip_max: u32) -> Result<Option<HelloFrame>, DecodeError> {
        let Some(len) = self.read_header().await? else {
            return Ok(None);
        };
        if len <= self.max {
            return self
                .read_body(len, decode_client_frame)
                .await
                .map(|f| Some(HelloFrame::Frame(f)));
        }
        let too_large = DecodeError::TooLarge { len, max: self.max };
        if len > skip_max {
            return Err(too_large);
        }
        // Variant, version and the token's length fit in 1 + 3 + 10 bytes.
        let mut head = [0u8; 14];
        let head = &mut head[..(len as usize).min(14)];
        self.inner
            .read_exact(head)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => DecodeError::Truncated,
                _ => DecodeError::Io(e),
            })?;
        let Some(token_len) = hello_token_len(head) else {
            return Err(too_large);
        };
        let rest = u64::from(len) - head.len() as u64;
        let skipped =
            tokio::io::copy(&mut (&mut self.inner).take(rest), &mut tokio::io::sink()).await?;
        if skipped < rest {
            return Err(DecodeError::Truncated);
        }
        Ok(Some(HelloFrame::Oversized { token_len }))
    }

    /// The next frame, its body decoded by `decode` (e.g. [`decode_client_frame`]); otherwise
    /// as [`FrameReader::read`].
    pub async fn read_with<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        let Some(len) = self.read_header().await? else {
            return Ok(None);
        };
        if len > self.max {
            return Err(DecodeError::TooLarge { len, max: self.max });
        }
        self.read_body(len, decode).await.map(Some)
    }

    /// A frame's length prefix (not zero); `None` at a clean end of stream.
    async fn read_header(&mut self) -> Result<Option<u32>, DecodeError> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let n = self.inner.read(&mut header[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(DecodeError::Truncated)
                };
            }
            got += n;
        }
        let len = u32::from_be_bytes(header);
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        Ok(Some(len))
    }

    /// A body of `len` bytes, decoded by `decode`.
    async fn read_body<T>(
        &mut self,
        len: u32,
        decode: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        // Grow the buffer as bytes arrive rather than by the announced length, so a peer that
        // sends only a header holds no memory for the body it promised.
        self.buf.clear();
        let got = (&mut self.inner)
            .take(u64::from(len))
            .read_to_end(&mut self.buf)
            .await?;
        if got < len as usize {
            return Err(DecodeError::Truncated);
        }
        let decoded = decode(&self.buf);
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        decoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;

    async fn read_all<T: DeserializeOwned>(bytes: &[u8], max: u32) -> Result<Vec<T>, DecodeError> {
        let mut r = FrameReader::new(bytes, max);
        let mut out = Vec::new();
        while let Some(v) = r.read::<T>().await? {
            out.push(v);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let a = ClientFrame::Hello {
            version: 1,
            token: "t".into(),
        };
        let b = ClientFrame::Request {
            id: 7,
            request: Request::Ping,
        };
        let mut wire = encode_frame(&a).to_vec();
        wire.extend_from_slice(&encode_frame(&b));
        let got: Vec<ClientFrame> = read_all(&wire, 1024).await.expect("decodes");
        assert_eq!(got, vec![a, b]);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_the_body() {
        // Only the header is present: an oversized length must be refused without waiting for a body.
        let wire = 100_000u32.to_be_bytes();
        let err = read_all::<ClientFrame>(&wire, 1024).await.unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    len: 100_000,
                    max: 1024
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn truncated_header_and_body_are_errors() {
        let frame = encode_frame(&ClientFrame::Request {
            id: 1,
            request: Request::Ping,
        });
        let err = read_all::<ClientFrame>(&frame[..2], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, DecodeError::Truncated), "{err}");
        let err = read_all::<ClientFrame>(&frame[..frame.len() - 1], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, DecodeError::Truncated), "{err}");
    }

    #[tokio::test]
    async fn zero_length_and_garbage_are_errors() {
        let err = read_all::<ClientFrame>(&[0, 0, 0, 0], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, DecodeError::Empty), "{err}");
        let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        let err = read_all::<ClientFrame>(&garbage, 1024).await.unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    #[test]
    fn request_variants_counts_every_request() {
        // The last variant's index is one below the count.
        let last = postcard::to_allocvec(&Request::Resume {
            room: "r".into(),
            epoch: 1,
            last_seq: 0,
        })
        .expect("encodes");
        assert_eq!(u32::from(last[0]) + 1, REQUEST_VARIANTS);
    }

    #[test]
    fn an_unknown_request_variant_is_reported_with_its_id() {
        // Request frame (1), id 300 (varint ac 02), variant 11, then fields of a future request.
        let body = [1, 0xac, 0x02, 11, 3, b'a', b'b', b'c'];
        let err = decode_client_frame(&body).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::UnknownRequest {
                    id: 300,
                    variant: 11
                }
            ),
            "{err}"
        );
        // A known variant with broken fields, or a broken frame tag, stays malformed.
        for bad in [&[1, 5, 0, 0xff][..], &[2, 5, 10][..], &[1, 0xff, 0xff][..]] {
            let err = decode_client_frame(bad).unwrap_err();
            assert!(matches!(err, DecodeError::Malformed(_)), "{bad:?}: {err}");
        }
        let ping = encode_frame(&ClientFrame::Request {
            id: 300,
            request: Request::Ping,
        });
        assert_eq!(
            decode_client_frame(&ping[4..]).expect("decodes"),
            ClientFrame::Request {
                id: 300,
                request: Request::Ping
            }
        );
    }

    #[tokio::test]
    async fn an_oversized_hello_is_skipped_and_reports_its_token_length() {
        let hello = |token: String| encode_frame(&ClientFrame::Hello { version: 1, token });
        let ping = encode_frame(&ClientFrame::Request {
            id: 1,
            request: Request::Ping,
        });
        // Over the limit: skipped whole, and the stream is still in step after it.
        let mut wire = hello("t".repeat(5000)).to_vec();
        wire.extend_from_slice(&ping);
        let mut r = FrameReader::new(&wire[..], 1024);
        assert_eq!(
            r.read_hello(1 << 20).await.expect("reads"),
            Some(HelloFrame::Oversized { token_len: 5000 })
        );
        assert!(matches!(
            r.read::<ClientFrame>().await,
            Ok(Some(ClientFrame::Request { id: 1, .. }))
        ));
        // Within the limit: decoded as usual.
        let small = hello("t".into());
        let mut r = FrameReader::new(&small[..], 1024);
        assert!(matches!(
            r.read_hello(1 << 20).await,
            Ok(Some(HelloFrame::Frame(ClientFrame::Hello { .. })))
        ));
        // Over the skip limit, or not a hello, or cut short: errors.
        let big = hello("t".repeat(5000));
        let mut r = FrameReader::new(&big[..], 1024);
        assert!(matches!(
            r.read_hello(4096).await,
            Err(DecodeError::TooLarge { max: 1024, .. })
        ));
        let mut not_hello = 2000u32.to_be_bytes().to_vec();
        not_hello.extend_from_slice(&[1; 2000]);
        let mut r = FrameReader::new(&not_hello[..], 1024);
        assert!(matches!(
            r.read_hello(1 << 20).await,
            Err(DecodeError::TooLarge { len: 2000, .. })
        ));
        let mut r = FrameReader::new(&big[..big.len() - 1], 1024);
        assert!(matches!(
            r.read_hello(1 << 20).await,
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = postcard::to_allocvec(&Request::Ping).expect("encodes");
        body.push(0);
        assert!(decode_body::<Request>(&body).is_err());
    }
}
