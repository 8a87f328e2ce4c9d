//! A non-recursive structural check of one CBOR data item (RFC 8949
//! section 3), run on every body before serde sees it.
//!
//! It bounds what the deserializer can be asked to do: every definite length
//! (string bytes, array and map item counts) must fit in the bytes that are
//! actually left in the frame, nesting is limited, tags (RFC 8949 section
//! 3.4) and reserved additional-information values are refused, and the
//! offset where the item ends is returned so the caller can reject trailing
//! bytes. UTF-8 validity and the message schema are left to the deserializer.

use super::ProtocolError;

/// What the container currently being walked still expects.
enum Pending {
    /// A definite number of data items (a map of n pairs expects 2n).
    Items(u64),
    /// Items until a break byte (indefinite-length array or map).
    UntilBreak,
}

/// The argument of an item head (RFC 8949 section 3).
enum Arg {
    Value(u64),
    Indefinite,
}

const BREAK: u8 = 0xFF;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> u64 {
        u64::try_from(self.buf.len().saturating_sub(self.pos)).unwrap_or(u64::MAX)
    }

    fn truncated(&self) -> ProtocolError {
        ProtocolError::Malformed(format!("CBOR item truncated at offset {}", self.pos))
    }

    fn byte(&mut self) -> Result<u8, ProtocolError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Skips `n` bytes that must all be inside the buffer.
    fn skip(&mut self, n: u64) -> Result<(), ProtocolError> {
        if n > self.remaining() {
            return Err(ProtocolError::Malformed(format!(
                "declared length {n} at offset {} exceeds the frame",
                self.pos
            )));
        }
        // n <= remaining <= buf.len(), so it fits in usize.
        self.pos += usize::try_from(n).map_err(|_| self.truncated())?;
        Ok(())
    }

    /// Reads an item head: (major type, argument).
    fn head(&mut self) -> Result<(u8, Arg), ProtocolError> {
        let at = self.pos;
        let ib = self.byte()?;
        let major = ib >> 5;
        let arg = match ib & 0x1f {
            ai @ 0..=23 => Arg::Value(u64::from(ai)),
            24 => Arg::Value(self.uint(1)?),
            25 => Arg::Value(self.uint(2)?),
            26 => Arg::Value(self.uint(4)?),
            27 => Arg::Value(self.uint(8)?),
            31 => Arg::Indefinite,
            _ => {
                return Err(ProtocolError::Malformed(format!(
                    "reserved CBOR additional information at offset {at}"
                )));
            }
        };
        Ok((major, arg))
    }

    /// A big-endian unsigned integer of `n` (<= 8) bytes.
    fn uint(&mut self, n: usize) -> Result<u64, ProtocolError> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 8) | u64::from(self.byte()?);
        }
        Ok(v)
    }
}

/// Walks the single CBOR data item at the start of `buf` and returns the
/// offset just past it.
pub(crate) fn scan_item(buf: &[u8], max_depth: usize) -> Result<usize, ProtocolError> {
    let mut cur = Cursor { buf, pos: 0 };
    // The root "container" expects exactly one item; it is not counted in
    // the nesting depth.
    let mut stack: Vec<Pending> = Vec::with_capacity(8);
    stack.push(Pending::Items(1));
    loop {
        match stack.last_mut() {
            None => return Ok(cur.pos),
            Some(Pending::Items(0)) => {
                stack.pop();
                continue;
            }
            Some(Pending::Items(n)) => *n -= 1,
            Some(Pending::UntilBreak) => {
                if cur.peek() == Some(BREAK) {
                    cur.pos += 1;
                    stack.pop();
                    continue;
                }
            }
        }
        let at = cur.pos;
        let pushed = match cur.head()? {
            (0 | 1, Arg::Value(_)) => None,
            (2 | 3, Arg::Value(len)) => {
                cur.skip(len)?;
                None
            }
            (major @ (2 | 3), Arg::Indefinite) => {
                // Chunks: definite-length strings of the same major type.
                loop {
                    if cur.peek() == Some(BREAK) {
                        cur.pos += 1;
                        break;
                    }
                    match cur.head()? {
                        (m, Arg::Value(len)) if m == major => cur.skip(len)?,
                        _ => {
                            return Err(ProtocolError::Malformed(format!(
                                "bad chunk in indefinite-length string at offset {at}"
                            )));
                        }
                    }
                }
                None
            }
            (4, Arg::Value(n)) => {
                // Every item takes at least one byte.
                if n > cur.remaining() {
                    return Err(count_error(n, at));
                }
                Some(Pending::Items(n))
            }
            (5, Arg::Value(n)) => {
                if n > cur.remaining() / 2 {
                    return Err(count_error(n, at));
                }
                Some(Pending::Items(2 * n))
            }
            (4 | 5, Arg::Indefinite) => Some(Pending::UntilBreak),
            (6, _) => {
                return Err(ProtocolError::Malformed(format!(
                    "CBOR tag at offset {at}: tags are not used by this protocol"
                )));
            }
            // Simple values (false, true, null, undefined, ...) and floats;
            // `head` already consumed their argument bytes.
            (7, Arg::Value(_)) => None,
            (7, Arg::Indefinite) => {
                return Err(ProtocolError::Malformed(format!(
                    "unexpected CBOR break at offset {at}"
                )));
            }
            _ => {
                return Err(ProtocolError::Malformed(format!(
                    "invalid CBOR item head at offset {at}"
                )));
            }
        };
        if let Some(p) = pushed {
            stack.push(p);
            // The root entry is not a level of nesting.
            if stack.len() > max_depth + 1 {
                return Err(ProtocolError::NestingTooDeep { max: max_depth });
            }
        }
    }
}

fn count_error(n: u64, at: usize) -> ProtocolError {
    ProtocolError::Malformed(format!(
        "declared item count {n} at offset {at} exceeds the frame"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(v: &ciborium::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_end_of_well_formed_items() {
        use ciborium::Value;
        let v = Value::Array(vec![
            Value::Integer(3.into()),
            Value::Map(vec![
                (Value::Text("a".into()), Value::Bytes(vec![1; 300])),
                (Value::Text("b".into()), Value::Float(1.5)),
                (Value::Text("c".into()), Value::Null),
                (Value::Text("d".into()), Value::Integer((-70000).into())),
            ]),
        ]);
        let mut bytes = cbor(&v);
        let len = bytes.len();
        assert_eq!(scan_item(&bytes, 4).unwrap(), len);
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(scan_item(&bytes, 4).unwrap(), len);
    }

    #[test]
    fn indefinite_lengths_are_walked() {
        // [_ 1, (_ h'01', h'0203'), {_ "a": 1}]
        let bytes = [
            0x9F, 0x01, 0x5F, 0x41, 0x01, 0x42, 0x02, 0x03, 0xFF, 0xBF, 0x61, b'a', 0x01, 0xFF,
            0xFF,
        ];
        assert_eq!(scan_item(&bytes, 4).unwrap(), bytes.len());
        // A text chunk inside a byte string is malformed.
        assert!(scan_item(&[0x5F, 0x61, b'a', 0xFF], 4).is_err());
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating() {
        // Byte string of 2^32 - 1 bytes, array of 2^64 - 1 items, map of 2^63 pairs.
        for bytes in [
            &[0x5A, 0xFF, 0xFF, 0xFF, 0xFF, 0x00][..],
            &[0x9B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00][..],
            &[0xBB, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x00][..],
            &[0x7B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF][..],
        ] {
            let e = scan_item(bytes, 16).unwrap_err();
            assert!(e.to_string().contains("exceeds the frame"), "{e}");
        }
    }

    #[test]
    fn nesting_is_limited() {
        let deep = [vec![0x81; 17], vec![0x00]].concat();
        assert_eq!(
            scan_item(&deep, 16),
            Err(ProtocolError::NestingTooDeep { max: 16 })
        );
        let ok = [vec![0x81; 16], vec![0x00]].concat();
        assert_eq!(scan_item(&ok, 16), Ok(17));
        // Indefinite-length containers count too.
        let deep = [vec![0x9F; 17], vec![0xFF; 17]].concat();
        assert!(scan_item(&deep, 16).is_err());
    }

    #[test]
    fn structural_errors() {
        for bad in [
            &[][..],                 // nothing
            &[0x82, 0x01][..],       // array missing an item
            &[0xFF][..],             // break outside a container
            &[0x1C][..],             // reserved additional information
            &[0xC2, 0x41, 0x01][..], // tag
            &[0x1F][..],             // indefinite integer
            &[0x19, 0x01][..],       // truncated argument
            &[0x9F, 0x01][..],       // indefinite array without break
        ] {
            assert!(scan_item(bad, 16).is_err(), "{bad:02x?}");
        }
    }
}
