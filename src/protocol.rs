//! The pipe protocol between the master and a worker (docs/protocol.md):
//! length-prefixed MessagePack frames and the messages they carry.
//!
//! This is the only Rust module that knows the bytes on the pipe; the Python
//! side is the `# protocol` section of `python_shim/rwsgi_shim.py`. It knows
//! nothing about HTTP or processes.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const VERSION: u32 = 1;
/// The largest frame either side accepts; body chunks are far smaller.
pub const MAX_FRAME: usize = 16 << 20;

pub type RequestId = u64;

/// A message from the master to a worker.
#[derive(Debug, Clone, Copy)]
pub enum ToWorker<'a> {
    /// A request: the environ as a pair blob, the body received so far, and
    /// whether more body follows (fetched with `Read`).
    Request { id: RequestId, environ: &'a [u8], body: &'a [u8], more: bool },
    /// More request body, in answer to `Read`.
    Body { id: RequestId, chunk: &'a [u8], more: bool },
    /// The client is gone.
    Cancel { id: RequestId },
}

/// A message from a worker to the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    Hello {
        version: u32,
        pid: u32,
        python: String,
        codec: String,
    },
    BootError {
        traceback: String,
    },
    /// The held-back status line and headers (a pair blob), with the first body chunk.
    Start {
        id: RequestId,
        status: Bytes,
        headers: Bytes,
        body: Bytes,
        last: bool,
    },
    Body {
        id: RequestId,
        chunk: Bytes,
        last: bool,
    },
    Error {
        id: RequestId,
        traceback: String,
    },
    Read {
        id: RequestId,
        size: u64,
    },
}

impl FromWorker {
    /// The request a per-request message is about.
    pub fn request_id(&self) -> Option<RequestId> {
        match *self {
            FromWorker::Start { id, .. }
            | FromWorker::Body { id, .. }
            | FromWorker::Error { id, .. }
            | FromWorker::Read { id, .. } => Some(id),
            FromWorker::Hello { .. } | FromWorker::BootError { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the worker sent a frame of {0} bytes, over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("the worker's pipe closed in the middle of a frame")]
    Truncated,
    #[error("the worker sent a malformed frame: {0}")]
    Malformed(String),
    #[error("reading the worker's pipe failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends `msg` as one frame to `out`.
pub fn encode(msg: &ToWorker<'_>, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    rmp_serde::encode::write(&mut (&mut *out).writer(), msg).expect("encoding into memory cannot fail");
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Decodes one frame's payload; byte fields share `frame`'s memory.
pub fn decode(frame: &Bytes) -> Result<FromWorker, ProtocolError> {
    let raw: Raw<'_> = rmp_serde::from_slice(frame).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(match raw {
        Raw::Hello(version, pid, python, codec) => {
            FromWorker::Hello { version, pid, python: text(python), codec: text(codec) }
        }
        Raw::BootError(tb) => FromWorker::BootError { traceback: text(tb) },
        Raw::Start(id, status, headers, body, last) => FromWorker::Start {
            id,
            status: frame.slice_ref(status),
            headers: frame.slice_ref(headers),
            body: frame.slice_ref(body),
            last,
        },
        Raw::Body(id, chunk, last) => FromWorker::Body { id, chunk: frame.slice_ref(chunk), last },
        Raw::Error(id, tb) => FromWorker::Error { id, traceback: text(tb) },
        Raw::Read(id, size) => FromWorker::Read { id, size },
    })
}

/// Builds a pair blob (`K \0 V \0 K \0 V`), the form of the environ and of headers.
#[derive(Default)]
pub struct PairBlob(BytesMut);

impl PairBlob {
    pub fn with_capacity(n: usize) -> Self {
        PairBlob(BytesMut::with_capacity(n))
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        self.push_parts(key, &[value]);
    }

    /// Pushes a value given in pieces, to build `HTTP_*` names and joined values without copies.
    pub fn push_parts(&mut self, key: &[u8], value: &[&[u8]]) {
        if !self.0.is_empty() {
            self.0.put_u8(0);
        }
        self.0.put_slice(key);
        self.0.put_u8(0);
        for part in value {
            self.0.put_slice(part);
        }
    }

    pub fn finish(self) -> Bytes {
        self.0.freeze()
    }
}

/// Splits a pair blob into its pairs; `None` for an odd number of fields.
pub fn pairs(blob: &Bytes) -> Option<Vec<(Bytes, Bytes)>> {
    if blob.is_empty() {
        return Some(Vec::new());
    }
    let mut fields = blob.split(|&b| b == 0).map(|f| blob.slice_ref(f));
    let mut out = Vec::new();
    while let Some(key) = fields.next() {
        out.push((key, fields.next()?));
    }
    Some(out)
}

/// Reads frames from a worker's stdout.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        FrameReader { io, buf: BytesMut::with_capacity(64 << 10) }
    }

    /// The next frame's payload, or `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if len > MAX_FRAME {
                    return Err(ProtocolError::TooLarge(len));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                self.buf.reserve(4 + len - self.buf.len());
            } else {
                self.buf.reserve(64 << 10);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ProtocolError::Truncated) };
            }
        }
    }
}

impl Serialize for ToWorker<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde_bytes::Bytes as Bin;
        match *self {
            ToWorker::Request { id, environ, body, more } => {
                let mut t = s.serialize_tuple(5)?;
                t.serialize_element(&1u8)?;
                t.serialize_element(&id)?;
                t.serialize_element(Bin::new(environ))?;
                t.serialize_element(Bin::new(body))?;
                t.serialize_element(&more)?;
                t.end()
            }
            ToWorker::Body { id, chunk, more } => {
                let mut t = s.serialize_tuple(4)?;
                t.serialize_element(&2u8)?;
                t.serialize_element(&id)?;
                t.serialize_element(Bin::new(chunk))?;
                t.serialize_element(&more)?;
                t.end()
            }
            ToWorker::Cancel { id } => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&3u8)?;
                t.serialize_element(&id)?;
                t.end()
            }
        }
    }
}

/// A worker message as it sits in the frame, borrowing its bytes.
enum Raw<'a> {
    Hello(u32, u32, &'a [u8], &'a [u8]),
    BootError(&'a [u8]),
    Start(RequestId, &'a [u8], &'a [u8], &'a [u8], bool),
    Body(RequestId, &'a [u8], bool),
    Error(RequestId, &'a [u8]),
    Read(RequestId, u64),
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array whose first element is a message type")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
        let kind: u8 = field(&mut seq)?;
        let msg = match kind {
            10 => Raw::Hello(field(&mut seq)?, field(&mut seq)?, text(&mut seq)?, text(&mut seq)?),
            11 => Raw::BootError(text(&mut seq)?),
            12 => Raw::Start(field(&mut seq)?, field(&mut seq)?, field(&mut seq)?, field(&mut seq)?, field(&mut seq)?),
            13 => Raw::Body(field(&mut seq)?, field(&mut seq)?, field(&mut seq)?),
            14 => Raw::Error(field(&mut seq)?, text(&mut seq)?),
            15 => Raw::Read(field(&mut seq)?, field(&mut seq)?),
            other => return Err(de::Error::custom(format_args!("unknown message type {other}"))),
        };
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format_args!("message type {kind} has extra fields")));
        }
        Ok(msg)
    }
}

fn field<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(seq: &mut A) -> Result<T, A::Error> {
    seq.next_element()?.ok_or_else(|| de::Error::custom("a field is missing"))
}

/// Text from the worker arrives as MessagePack str or bin; both are kept as bytes.
fn text<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<&'de [u8], A::Error> {
    Ok(field::<TextBytes<'de>, A>(seq)?.0)
}

struct TextBytes<'a>(&'a [u8]);

impl<'de> Deserialize<'de> for TextBytes<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextBytes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("text")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(TextBytes(v.as_bytes()))
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(TextBytes(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(value: &rmpv::Value) -> Bytes {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        Bytes::from(out)
    }

    #[test]
    fn request_frame_layout() {
        let mut out = BytesMut::new();
        encode(&ToWorker::Request { id: 7, environ: b"A\0b", body: b"xy", more: true }, &mut out);
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 4);
        let value = rmpv::decode::read_value(&mut &out[4..]).unwrap();
        assert_eq!(
            value,
            rmpv::Value::Array(vec![
                1.into(),
                7.into(),
                rmpv::Value::Binary(b"A\0b".to_vec()),
                rmpv::Value::Binary(b"xy".to_vec()),
                true.into()
            ])
        );
    }

    #[test]
    fn decodes_start_with_str_or_bin_text() {
        use rmpv::Value::{Array, Binary};
        let frame = pack(&Array(vec![
            12.into(),
            3.into(),
            Binary(b"200 OK".to_vec()),
            Binary(b"A\0b".to_vec()),
            Binary(b"hi".to_vec()),
            true.into(),
        ]));
        assert_eq!(
            decode(&frame).unwrap(),
            FromWorker::Start { id: 3, status: "200 OK".into(), headers: "A\0b".into(), body: "hi".into(), last: true }
        );
        let error = pack(&Array(vec![14.into(), 3.into(), "Traceback".into()]));
        assert_eq!(decode(&error).unwrap(), FromWorker::Error { id: 3, traceback: "Traceback".into() });
        let error = pack(&Array(vec![14.into(), 3.into(), Binary(b"Trace\xffback".to_vec())]));
        assert_eq!(decode(&error).unwrap(), FromWorker::Error { id: 3, traceback: "Trace\u{fffd}back".into() });
    }

    #[test]
    fn rejects_bad_messages() {
        use rmpv::Value::{Array, Binary};
        for bad in [
            pack(&Array(vec![99.into()])),
            pack(&Array(vec![13.into(), 1.into(), Binary(vec![])])),
            pack(&Array(vec![13.into(), 1.into(), Binary(vec![]), true.into(), 5.into()])),
            pack(&Array(vec![13.into(), (-1).into(), Binary(vec![]), true.into()])),
            pack(&"hello".into()),
            Bytes::from_static(b"\xc1"),
            Bytes::new(),
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pair_blobs_round_trip() {
        let mut blob = PairBlob::default();
        blob.push(b"Content-Type", b"text/plain");
        blob.push_parts(b"X", &[b"a", b",", b"b"]);
        blob.push(b"Empty", b"");
        let pairs = pairs(&blob.finish()).unwrap();
        assert_eq!(
            pairs,
            vec![("Content-Type".into(), "text/plain".into()), ("X".into(), "a,b".into()), ("Empty".into(), "".into())]
        );
        assert_eq!(super::pairs(&Bytes::from_static(b"odd")), None);
        assert_eq!(super::pairs(&Bytes::new()), Some(vec![]));
    }

    proptest::proptest! {
        /// Whatever a worker sends, decoding answers Ok or Err and never panics.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode(&Bytes::from(bytes));
        }

        /// Well-formed worker messages with arbitrary contents decode to what was sent.
        #[test]
        fn body_frames_round_trip(id in 0u64.., chunk in proptest::collection::vec(proptest::num::u8::ANY, 0..512), last: bool) {
            use rmpv::Value::{Array, Binary};
            let frame = pack(&Array(vec![13.into(), id.into(), Binary(chunk.clone()), last.into()]));
            proptest::prop_assert_eq!(decode(&frame).unwrap(), FromWorker::Body { id, chunk: chunk.into(), last });
        }

        /// A frame stream cut or corrupted anywhere gives frames or an error, never a panic or a hang.
        #[test]
        fn frame_reader_survives_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let mut reader = FrameReader::new(&bytes[..]);
                while let Ok(Some(_)) = reader.next().await {}
            });
        }
    }

    #[tokio::test]
    async fn frame_reader_splits_and_limits() {
        let mut input = Vec::new();
        for payload in [&b"abc"[..], b"", b"hello"] {
            input.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            input.extend_from_slice(payload);
        }
        let mut reader = FrameReader::new(&input[..]);
        assert_eq!(reader.next().await.unwrap().unwrap(), "abc");
        assert_eq!(reader.next().await.unwrap().unwrap(), "");
        assert_eq!(reader.next().await.unwrap().unwrap(), "hello");
        assert!(reader.next().await.unwrap().is_none());

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(FrameReader::new(&huge[..]).next().await, Err(ProtocolError::TooLarge(_))));
        assert!(matches!(FrameReader::new(&[0u8, 0, 0, 9, 1][..]).next().await, Err(ProtocolError::Truncated)));
    }
}
