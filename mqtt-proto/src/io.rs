//! Byte-level reading and writing shared by every packet.
//!
//! Writing goes through [`Sink`], implemented both by a counter and by `BytesMut`,
//! so that `encoded_len` and `encode` run the same code and cannot disagree.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::string::{
    validate_topic_filter, validate_topic_name, validate_utf8, MqttString, StringError,
    TopicFilter, TopicName,
};

/// The largest value a Variable Byte Integer can carry [MQTT-1.5.5].
pub const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

/// Where encoded bytes go: a counter or a buffer.
pub(crate) trait Sink {
    fn put_slice(&mut self, bytes: &[u8]);
    #[inline]
    fn put_u8(&mut self, b: u8) {
        self.put_slice(&[b]);
    }
    #[inline]
    fn put_u16(&mut self, v: u16) {
        self.put_slice(&v.to_be_bytes());
    }
    #[inline]
    fn put_u32(&mut self, v: u32) {
        self.put_slice(&v.to_be_bytes());
    }
    #[inline]
    fn put_vbi(&mut self, v: u32) {
        let mut buf = [0u8; 4];
        let n = encode_vbi(v, &mut buf);
        self.put_slice(&buf[..n]);
    }
    /// A length-prefixed string or binary; the caller checked the length fits in u16.
    #[inline]
    fn put_lp(&mut self, bytes: &[u8]) {
        self.put_u16(bytes.len() as u16);
        self.put_slice(bytes);
    }
    /// A counter adds `n` bytes it has already counted and returns true; a buffer
    /// returns false, and the caller writes them.
    #[inline]
    fn add_counted(&mut self, _n: usize) -> bool {
        false
    }
}

/// Counts bytes without writing them.
#[derive(Default)]
pub(crate) struct Counter(pub usize);

impl Sink for Counter {
    #[inline]
    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    #[inline]
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    #[inline]
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    #[inline]
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    #[inline]
    fn put_vbi(&mut self, v: u32) {
        self.0 += vbi_len(v);
    }
    #[inline]
    fn add_counted(&mut self, n: usize) -> bool {
        self.0 += n;
        true
    }
}

impl Sink for BytesMut {
    #[inline]
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    #[inline]
    fn put_u8(&mut self, b: u8) {
        BufMut::put_u8(self, b);
    }
    #[inline]
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    #[inline]
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
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
#[inline]
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

/// A cursor over part of one packet's bytes, borrowing the packet.
///
/// Fields that outlive decoding (topics, strings, binary data) are handed out as
/// `Bytes` slices of the packet; everything else is read from the borrowed bytes, so
/// walking the packet costs no reference-count traffic. Sub-readers over a property
/// block share the same buffer, and positions are always relative to the whole
/// packet.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf[start..]`.
    pub(crate) fn new(buf: &'a Bytes, start: usize) -> Self {
        Reader {
            buf,
            pos: start.min(buf.len()),
            end: buf.len(),
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The whole packet this reader walks.
    pub(crate) fn buffer(&self) -> &'a Bytes {
        self.buf
    }

    pub(crate) fn expect_end(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let s = self.take_slice(1)?;
        Ok(s[0])
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
        match decode_vbi(self.rest_slice())? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(DecodeError::UnexpectedEnd),
        }
    }

    /// The unread bytes, without consuming them.
    pub(crate) fn rest_slice(&self) -> &'a [u8] {
        &self.buf[self.pos..self.end]
    }

    /// The next `n` bytes, borrowed.
    fn take_slice(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The range of the next `n` bytes, consumed.
    fn take_range(&mut self, n: usize) -> Result<core::ops::Range<usize>, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd);
        }
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    /// Two-byte length prefixed binary data [MQTT-1.5.6], as a shared slice.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        Ok(self.buf.slice(self.take_range(n)?))
    }

    /// A length-prefixed field, validated by `check` before any `Bytes` is made of it.
    fn checked(
        &mut self,
        check: impl FnOnce(&[u8]) -> Result<(), StringError>,
    ) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        let range = self.take_range(n)?;
        check(&self.buf[range.clone()])?;
        Ok(self.buf.slice(range))
    }

    pub(crate) fn string(&mut self) -> Result<MqttString, DecodeError> {
        Ok(MqttString::new_unchecked(self.checked(validate_utf8)?))
    }

    pub(crate) fn topic_name(&mut self) -> Result<TopicName, DecodeError> {
        Ok(TopicName::new_unchecked(self.checked(validate_topic_name)?))
    }

    pub(crate) fn topic_filter(&mut self) -> Result<TopicFilter, DecodeError> {
        Ok(TopicFilter::new_unchecked(
            self.checked(validate_topic_filter)?,
        ))
    }

    /// Skips `n` bytes.
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.take_range(n).map(drop)
    }

    /// Checks a UTF-8 Encoded String and skips it, making no `Bytes` of it.
    pub(crate) fn skip_string(&mut self) -> Result<(), DecodeError> {
        let n = self.u16()? as usize;
        Ok(validate_utf8(self.take_slice(n)?)?)
    }

    /// A reader over `range` of the same packet, which this reader has already read.
    pub(crate) fn sub_of(&self, range: core::ops::Range<usize>) -> Reader<'a> {
        Reader {
            buf: self.buf,
            pos: range.start,
            end: range.end,
        }
    }

    /// A sub-reader over the next `n` bytes (a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        let range = self.take_range(n)?;
        Ok(Reader {
            buf: self.buf,
            pos: range.start,
            end: range.end,
        })
    }
}
