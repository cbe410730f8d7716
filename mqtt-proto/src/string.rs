//! Validated UTF-8 strings, topic names and topic filters over `Bytes`.
//!
//! Each type checks its rules once, when it is built (by the decoder or by the
//! caller), and is a cheap `Bytes` slice afterwards: a topic decoded from a
//! packet shares the packet's buffer.

use bytes::Bytes;
use core::fmt;

use crate::error::DecodeError;

/// Why a string, topic name or topic filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringError {
    /// Not well-formed UTF-8, or UTF-16 surrogates encoded in UTF-8 [MQTT-1.5.4-1].
    InvalidUtf8,
    /// Contains U+0000 [MQTT-1.5.4-2].
    NullCharacter,
    /// Longer than 65,535 bytes [MQTT-1.5.4].
    TooLong,
    /// A topic name or filter of zero length [MQTT-4.7.3-1].
    Empty,
    /// A wildcard in a topic name [MQTT-3.3.2-2] / [MQTT-4.7.1-1].
    WildcardInTopicName,
    /// `#` not alone in the last level, or `+` not alone in its level
    /// [MQTT-4.7.1-1] [MQTT-4.7.1-2] (5.0 numbering: [MQTT-4.7.1-1], [MQTT-4.7.1-2]).
    InvalidWildcard,
    /// `$share/` without a valid share name and filter [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    InvalidSharedSubscription,
}

impl fmt::Display for StringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StringError::InvalidUtf8 => "not well-formed UTF-8",
            StringError::NullCharacter => "contains U+0000",
            StringError::TooLong => "longer than 65535 bytes",
            StringError::Empty => "empty topic",
            StringError::WildcardInTopicName => "wildcard in a topic name",
            StringError::InvalidWildcard => "misplaced wildcard in a topic filter",
            StringError::InvalidSharedSubscription => "malformed $share/ subscription",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StringError {}

impl From<StringError> for DecodeError {
    fn from(e: StringError) -> Self {
        DecodeError::InvalidString(e)
    }
}

/// A UTF-8 Encoded String [MQTT-1.5.4]: well-formed, no U+0000, at most 65,535 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttString(Bytes);

impl MqttString {
    /// Validates `bytes` as an MQTT UTF-8 string.
    pub fn new(bytes: Bytes) -> Result<Self, StringError> {
        validate_utf8(&bytes)?;
        Ok(MqttString(bytes))
    }

    /// For bytes the caller has passed through [`validate_utf8`].
    pub(crate) fn new_unchecked(bytes: Bytes) -> Self {
        MqttString(bytes)
    }

    /// Builds from a `&'static str`, validated.
    pub fn from_static(s: &'static str) -> Result<Self, StringError> {
        Self::new(Bytes::from_static(s.as_bytes()))
    }

    /// Copies a `&str` into a new string, validated.
    pub fn copy_from_str(s: &str) -> Result<Self, StringError> {
        Self::new(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The empty string.
    pub const fn empty() -> Self {
        MqttString(Bytes::new())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // The constructor checked that the bytes are UTF-8, and `Bytes` is immutable.
        core::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The encoded bytes (without the length prefix).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying shared buffer.
    pub fn as_shared(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the zero-length string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic name: an [`MqttString`] without wildcards [MQTT-3.3.2-2].
///
/// Empty is allowed only in a 5.0 PUBLISH that carries a Topic Alias; the decoder
/// checks that case, so [`TopicName::new`] accepts the empty string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Validates a topic name (may be empty, see the type docs).
    pub fn new(bytes: Bytes) -> Result<Self, StringError> {
        validate_topic_name(&bytes)?;
        Ok(TopicName(MqttString(bytes)))
    }

    /// For bytes the caller has passed through [`validate_topic_name`].
    pub(crate) fn new_unchecked(bytes: Bytes) -> Self {
        TopicName(MqttString(bytes))
    }

    /// A validated string that must also be a topic name; takes it over without
    /// copying or re-checking its UTF-8.
    pub(crate) fn from_string(s: MqttString) -> Result<Self, StringError> {
        check_no_wildcards(s.as_bytes())?;
        Ok(TopicName(s))
    }

    /// Builds from a `&'static str`, validated.
    pub fn from_static(s: &'static str) -> Result<Self, StringError> {
        Self::new(Bytes::from_static(s.as_bytes()))
    }

    /// Copies a `&str`, validated.
    pub fn copy_from_str(s: &str) -> Result<Self, StringError> {
        Self::new(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The underlying shared buffer.
    pub fn as_shared(&self) -> &Bytes {
        self.0.as_shared()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the zero-length name (only valid with a Topic Alias).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if the first character is `$`: such topics are not matched by filters
    /// starting with a wildcard [MQTT-4.7.2-1].
    pub fn is_dollar(&self) -> bool {
        self.as_bytes().first() == Some(&b'$')
    }

    /// The levels of the name, split at `/`.
    pub fn levels(&self) -> core::slice::Split<'_, u8, fn(&u8) -> bool> {
        split_levels(self.as_bytes())
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_slash(b: &u8) -> bool {
    *b == b'/'
}

/// Splits topic bytes into levels at `/`.
pub fn split_levels(bytes: &[u8]) -> core::slice::Split<'_, u8, fn(&u8) -> bool> {
    bytes.split(is_slash as fn(&u8) -> bool)
}

/// A topic filter: non-empty, wildcards only where [MQTT-4.7.1-1] and
/// [MQTT-4.7.1-2] allow them, and `$share/{ShareName}/{filter}` well formed
/// [MQTT-4.8.2-1] [MQTT-4.8.2-2].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(MqttString);

impl TopicFilter {
    /// Validates a topic filter.
    pub fn new(bytes: Bytes) -> Result<Self, StringError> {
        validate_topic_filter(&bytes)?;
        Ok(TopicFilter(MqttString(bytes)))
    }

    /// For bytes the caller has passed through [`validate_topic_filter`].
    pub(crate) fn new_unchecked(bytes: Bytes) -> Self {
        TopicFilter(MqttString(bytes))
    }

    /// Builds from a `&'static str`, validated.
    pub fn from_static(s: &'static str) -> Result<Self, StringError> {
        Self::new(Bytes::from_static(s.as_bytes()))
    }

    /// Copies a `&str`, validated.
    pub fn copy_from_str(s: &str) -> Result<Self, StringError> {
        Self::new(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The whole filter as sent, `$share/...` prefix included.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The bytes of the whole filter.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The underlying shared buffer.
    pub fn as_shared(&self) -> &Bytes {
        self.0.as_shared()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: filters are non-empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// For `$share/{group}/{filter}`: the share name and the filter to match.
    pub fn shared(&self) -> Option<(&str, &str)> {
        match shared_parts(self.as_bytes()) {
            Some(Ok((group, filter))) => {
                // Both parts are sub-slices of a validated UTF-8 string split at ASCII '/'.
                let group = core::str::from_utf8(group).ok()?;
                let filter = core::str::from_utf8(filter).ok()?;
                Some((group, filter))
            }
            _ => None,
        }
    }

    /// The filter that is matched against topic names: without a `$share/{group}/` prefix.
    pub fn match_filter(&self) -> &[u8] {
        match shared_parts(self.as_bytes()) {
            Some(Ok((_, filter))) => filter,
            _ => self.as_bytes(),
        }
    }

    /// True if the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.match_filter().iter().any(|&b| b == b'+' || b == b'#')
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Some(Ok((group, filter)))` for a well-formed `$share/` filter, `Some(Err)` for a
/// malformed one, `None` when the filter is not shared.
type SharedParts<'a> = Option<Result<(&'a [u8], &'a [u8]), StringError>>;

fn shared_parts(b: &[u8]) -> SharedParts<'_> {
    let rest = b.strip_prefix(b"$share/")?;
    let Some(slash) = rest.iter().position(|&c| c == b'/') else {
        return Some(Err(StringError::InvalidSharedSubscription));
    };
    let (group, filter) = (&rest[..slash], &rest[slash + 1..]);
    // [MQTT-4.8.2-1] ShareName: at least one character, no '/', '+' or '#'.
    // [MQTT-4.8.2-2] followed by '/' and a non-empty Topic Filter.
    if group.is_empty() || filter.is_empty() || group.iter().any(|&c| c == b'+' || c == b'#') {
        return Some(Err(StringError::InvalidSharedSubscription));
    }
    Some(Ok((group, filter)))
}

/// The rules of a topic name: an MQTT string without wildcards [MQTT-3.3.2-2].
pub(crate) fn validate_topic_name(b: &[u8]) -> Result<(), StringError> {
    if b.len() <= u16::MAX as usize && plain_ascii(b, true) {
        return Ok(());
    }
    validate_utf8(b)?;
    check_no_wildcards(b)
}

/// True when every byte is ASCII other than U+0000 (and, with `no_wildcards`, other
/// than '+' and '#'): the common case, decided in one branch-free pass that the
/// compiler vectorises. Anything else takes the exact checks, which name the error.
#[inline]
fn plain_ascii(b: &[u8], no_wildcards: bool) -> bool {
    let mut bad = false;
    for &c in b {
        bad |= c == 0 || c >= 0x80 || (no_wildcards && (c == b'+' || c == b'#'));
    }
    !bad
}

fn check_no_wildcards(b: &[u8]) -> Result<(), StringError> {
    if b.iter().any(|&c| c == b'+' || c == b'#') {
        return Err(StringError::WildcardInTopicName);
    }
    Ok(())
}

/// The rules of a topic filter: a non-empty MQTT string, wildcards where allowed, and
/// a well-formed `$share/` prefix.
pub(crate) fn validate_topic_filter(b: &[u8]) -> Result<(), StringError> {
    validate_utf8(b)?;
    if b.is_empty() {
        return Err(StringError::Empty);
    }
    let filter = match shared_parts(b) {
        Some(Ok((_, filter))) => filter,
        Some(Err(e)) => return Err(e),
        None => b,
    };
    validate_filter_levels(filter)
}

fn validate_filter_levels(filter: &[u8]) -> Result<(), StringError> {
    let mut levels = split_levels(filter).peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        for &c in level {
            match c {
                // [MQTT-4.7.1-1] '#' alone in its level and the last character.
                b'#' if level.len() != 1 || !last => return Err(StringError::InvalidWildcard),
                // [MQTT-4.7.1-2] '+' occupies an entire level.
                b'+' if level.len() != 1 => return Err(StringError::InvalidWildcard),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Checks the rules of a UTF-8 Encoded String [MQTT-1.5.4-1] [MQTT-1.5.4-2].
pub(crate) fn validate_utf8(b: &[u8]) -> Result<(), StringError> {
    if b.len() > u16::MAX as usize {
        return Err(StringError::TooLong);
    }
    if plain_ascii(b, false) {
        return Ok(());
    }
    // Rust's validator rejects overlong forms and encoded surrogates (U+D800..U+DFFF),
    // exactly the ill-formed sequences [MQTT-1.5.4-1] names.
    core::str::from_utf8(b).map_err(|_| StringError::InvalidUtf8)?;
    if b.contains(&0) {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}
