//! Quoting text in messages and logs.

/// A key id as quoted in messages: at most 256 characters.
pub(crate) fn short(s: &str) -> &str {
    match s.char_indices().nth(256) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}
