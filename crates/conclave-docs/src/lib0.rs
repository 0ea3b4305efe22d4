//! The lib0 primitives the y-websocket framing is built from: `varUint`,
//! `varUint8Array` and `varString` (PROTOCOL.md of y-protocols; lib0
//! `encoding.js`).
//!
//! The reader is strict: running out of bytes inside a value is an error,
//! never a quiet end of the message, so a truncated frame cannot be half
//! applied.

use crate::DocError;

/// lib0 numbers are JavaScript numbers: a `varUint` never carries more than
/// 53 significant bits, which takes at most 8 bytes of 7 bits.
const VAR_UINT_MAX_BYTES: usize = 8;
const JS_SAFE_INTEGER_MAX: u64 = (1 << 53) - 1;

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub(crate) fn has_content(&self) -> bool {
        self.pos < self.bytes.len()
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn var_uint(&mut self) -> Result<u64, DocError> {
        let mut value: u64 = 0;
        for i in 0..VAR_UINT_MAX_BYTES {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or(DocError::Malformed("a number ends early"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if value > JS_SAFE_INTEGER_MAX {
                    return Err(DocError::Malformed("a number exceeds 2^53"));
                }
                return Ok(value);
            }
        }
        Err(DocError::Malformed("a number is longer than 8 bytes"))
    }

    pub(crate) fn var_bytes(&mut self) -> Result<&'a [u8], DocError> {
        let len = usize::try_from(self.var_uint()?)
            .map_err(|_| DocError::Malformed("a length does not fit in memory"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(DocError::Malformed(
                "a length runs past the end of the message",
            ))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    pub(crate) fn var_string(&mut self) -> Result<&'a str, DocError> {
        std::str::from_utf8(self.var_bytes()?)
            .map_err(|_| DocError::Malformed("a string is not UTF-8"))
    }
}

pub(crate) fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(crate) fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(crate) fn write_var_string(out: &mut Vec<u8>, text: &str) {
    write_var_bytes(out, text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_uint_matches_lib0() {
        let mut out = Vec::new();
        write_var_uint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02], "the lib0 example: 300 is ac 02");
        for value in [0, 1, 127, 128, 16_383, 16_384, JS_SAFE_INTEGER_MAX] {
            let mut out = Vec::new();
            write_var_uint(&mut out, value);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.var_uint().unwrap(), value);
            assert!(!reader.has_content());
        }
    }

    #[test]
    fn truncated_and_oversized_values_are_errors() {
        assert!(
            Reader::new(&[0x80]).var_uint().is_err(),
            "continuation, then nothing"
        );
        assert!(
            Reader::new(&[0xff; 9]).var_uint().is_err(),
            "more than 8 bytes"
        );
        let mut over = Vec::new();
        write_var_uint(&mut over, JS_SAFE_INTEGER_MAX + 1);
        assert!(Reader::new(&over).var_uint().is_err(), "beyond 2^53");
        assert!(
            Reader::new(&[0x05, b'a']).var_bytes().is_err(),
            "length past the end"
        );
        assert!(
            Reader::new(&[0x01, 0xff]).var_string().is_err(),
            "not UTF-8"
        );
    }
}
