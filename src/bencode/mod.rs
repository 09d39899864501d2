//! Bencode (BEP 3) decoding into borrowed values, and encoding.
//!
//! Hand-written rather than serde_bencode because the info-hash is the SHA1 of the exact bytes
//! of the `info` dictionary as they appear in the file: every decoded dictionary keeps the raw
//! span it was parsed from. Input is hostile: nesting depth is bounded, integers are checked,
//! and every error says where it happened.

use thiserror::Error;

/// Deeper nesting than this is refused: real torrents, tracker replies and KRPC need < 10.
const MAX_DEPTH: usize = 64;

/// More values than this in one input are refused. A decoded value takes ~50 bytes for the 2 of
/// its smallest encoding (`0:`), so without a cap a 64 MB torrent file of empty strings would
/// need over 1.5 GB. libtorrent's `max_decode_tokens` is 3,000,000 too; a torrent of 100,000
/// files needs about 600,000.
pub const MAX_VALUES: usize = 3_000_000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BencodeError {
    #[error("bencode ends early at byte {0}")]
    Eof(usize),
    #[error("bencode: unexpected byte {byte:#04x} at {pos}")]
    Unexpected { byte: u8, pos: usize },
    #[error("bencode: bad integer at byte {0}")]
    BadInt(usize),
    #[error("bencode: dictionary key repeated at byte {0}")]
    DuplicateKey(usize),
    #[error("bencode nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("bencode: {0} bytes of trailing data")]
    Trailing(usize),
    #[error("bencode holds more than {MAX_VALUES} values")]
    TooManyValues,
}

/// A decoded value borrowing from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    Dict(Dict<'a>),
}

/// A dictionary with its entries in input order and the raw bytes it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dict<'a> {
    pub raw: &'a [u8],
    entries: Vec<(&'a [u8], Value<'a>)>,
}

impl<'a> Dict<'a> {
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &Value<'a>)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<'a> Value<'a> {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value as UTF-8 text, `None` when it is not a string or not valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&Dict<'a>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Shorthand for `as_dict()?.get(key)`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.as_dict()?.get(key)
    }
}

/// Decodes exactly one value; trailing bytes are an error.
pub fn decode(input: &[u8]) -> Result<Value<'_>, BencodeError> {
    let (value, used) = decode_prefix(input)?;
    if used != input.len() {
        return Err(BencodeError::Trailing(input.len() - used));
    }
    Ok(value)
}

/// Decodes one value from the start of `input`; returns it and the bytes it used
/// (BEP 9 metadata messages put raw data after a bencoded header).
pub fn decode_prefix(input: &[u8]) -> Result<(Value<'_>, usize), BencodeError> {
    let mut d = Decoder {
        input,
        pos: 0,
        values: 0,
    };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    /// Values decoded so far, against [`MAX_VALUES`].
    values: usize,
}

impl<'a> Decoder<'a> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::Eof(self.pos))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, BencodeError> {
        if depth > MAX_DEPTH {
            return Err(BencodeError::TooDeep);
        }
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(BencodeError::TooManyValues);
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.int_until(b'e')?;
                Ok(Value::Int(n))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                let start = self.pos;
                self.pos += 1;
                let mut entries: Vec<(&'a [u8], Value<'a>)> = Vec::new();
                // BEP 3 wants sorted keys, but old tools wrote unsorted ones and libtorrent reads
                // them; the info-hash is over the raw bytes either way. Repeated keys are refused:
                // two readers could disagree on which one counts.
                let mut sorted = true;
                while self.peek()? != b'e' {
                    let key = self.bytes()?;
                    sorted &= entries.last().is_none_or(|(prev, _)| *prev < key);
                    let v = self.value(depth + 1)?;
                    entries.push((key, v));
                }
                if !sorted {
                    let mut keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
                    keys.sort_unstable();
                    if keys.windows(2).any(|w| w[0] == w[1]) {
                        return Err(BencodeError::DuplicateKey(start));
                    }
                }
                self.pos += 1;
                Ok(Value::Dict(Dict {
                    raw: &self.input[start..self.pos],
                    entries,
                }))
            }
            byte => Err(BencodeError::Unexpected {
                byte,
                pos: self.pos,
            }),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], BencodeError> {
        let at = self.pos;
        // int_until refuses a negative length, so the conversion only fails on 32-bit overflow.
        let len = usize::try_from(self.int_until(b':')?).map_err(|_| BencodeError::BadInt(at))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.input.len())
            .ok_or(BencodeError::Eof(self.input.len()))?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Parses a canonical decimal integer terminated by `end` (no leading zeros, no `-0`).
    fn int_until(&mut self, end: u8) -> Result<i64, BencodeError> {
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest
            .iter()
            .position(|&b| b == end)
            .ok_or(BencodeError::Eof(self.input.len()))?;
        let digits = &rest[..len];
        let (neg, body) = match digits {
            [b'-', body @ ..] => (true, body),
            _ => (false, digits),
        };
        let canonical = !body.is_empty()
            && body.iter().all(u8::is_ascii_digit)
            && (body == b"0" || body[0] != b'0')
            && !(neg && body == b"0")
            && !(neg && end == b':');
        if !canonical {
            return Err(BencodeError::BadInt(start));
        }
        let text = std::str::from_utf8(digits).map_err(|_| BencodeError::BadInt(start))?;
        let n = text
            .parse::<i64>()
            .map_err(|_| BencodeError::BadInt(start))?;
        self.pos = start + len + 1;
        Ok(n)
    }
}

/// Builds bencoded output. Callers write dictionary keys in sorted order, as BEP 3 requires.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn int(&mut self, n: i64) -> &mut Self {
        self.buf.push(b'i');
        self.buf.extend_from_slice(n.to_string().as_bytes());
        self.buf.push(b'e');
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b.len().to_string().as_bytes());
        self.buf.push(b':');
        self.buf.extend_from_slice(b);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends already-encoded bytes (e.g. a raw `info` dictionary).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub fn begin_list(&mut self) -> &mut Self {
        self.buf.push(b'l');
        self
    }

    pub fn begin_dict(&mut self) -> &mut Self {
        self.buf.push(b'd');
        self
    }

    pub fn end(&mut self) -> &mut Self {
        self.buf.push(b'e');
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests;
