//! Byte-level reading and writing shared by every packet.
//!
//! Writing goes through [`Sink`], implemented both by a counter and by `BytesMut`,
//! so that `encoded_len` and `encode` run the same code and cannot disagree.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::string::{MqttString, TopicFilter, TopicName};

/// The largest value a Variable Byte Integer can carry [MQTT-1.5.5].
pub const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

/// Where encoded bytes go: a counter or a buffer.
pub(crate) trait Sink {
    fn put_slice(&mut self, bytes: &[u8]);
    fn put_u8(&mut self, b: u8) {
        self.put_slice(&[b]);
    }
    fn put_u16(&mut self, v: u16) {
        self.put_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.put_slice(&v.to_be_bytes());
    }
    fn put_vbi(&mut self, v: u32) {
        let mut buf = [0u8; 4];
        let n = encode_vbi(v, &mut buf);
        self.put_slice(&buf[..n]);
    }
    /// A length-prefixed string or binary; the caller checked the length fits in u16.
    fn put_lp(&mut self, bytes: &[u8]) {
        self.put_u16(bytes.len() as u16);
        self.put_slice(bytes);
    }
}

/// Counts bytes without writing them.
#[derive(Default)]
pub(crate) struct Counter(pub usize);

impl Sink for Counter {
    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_vbi(&mut self, v: u32) {
        self.0 += vbi_len(v);
    }
}

impl Sink for BytesMut {
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_u8(&mut self, b: u8) {
        BufMut::put_u8(self, b);
    }
}

/// Number of bytes a Variable Byte Integer takes.
pub const fn vbi_len(v: u32) -> usize {
    if v < 128 {
        1
    } else if v < 16_384 {
        2
    } else if v < 2_097_152 {
        3
    } else {
        4
    }
}

/// Encodes `v` (at most [`MAX_VARIABLE_BYTE_INTEGER`]) into `out`, returns the length.
pub(crate) fn encode_vbi(mut v: u32, out: &mut [u8; 4]) -> usize {
    let mut i = 0;
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out[i] = byte;
        i += 1;
        if v == 0 || i == 4 {
            return i;
        }
    }
}

/// Decodes a Variable Byte Integer from the start of `buf`.
///
/// `Ok(None)`: more bytes are needed. More than four bytes, or a non-minimal
/// encoding, is malformed [MQTT-1.5.5-1].
pub(crate) fn decode_vbi(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero byte after the first means a longer encoding than needed.
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVariableByteInteger);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::MalformedVariableByteInteger)
}

/// A cursor over one packet's body. Slices it hands out share the packet's buffer.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn buffer(&self) -> &Bytes {
        &self.buf
    }

    pub(crate) fn expect_end(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::UnexpectedEnd)?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take_slice(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take_slice(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        match decode_vbi(&self.buf[self.pos..])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(DecodeError::UnexpectedEnd),
        }
    }

    fn take_slice(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// `n` bytes as a shared slice of the packet.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd);
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Everything left, as a shared slice.
    pub(crate) fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }

    /// Two-byte length prefixed binary data [MQTT-1.5.6].
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    pub(crate) fn string(&mut self) -> Result<MqttString, DecodeError> {
        Ok(MqttString::new(self.binary()?)?)
    }

    pub(crate) fn topic_name(&mut self) -> Result<TopicName, DecodeError> {
        Ok(TopicName::new(self.binary()?)?)
    }

    pub(crate) fn topic_filter(&mut self) -> Result<TopicFilter, DecodeError> {
        Ok(TopicFilter::new(self.binary()?)?)
    }

    /// A sub-reader over the next `n` bytes (a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(n)?))
    }
}
