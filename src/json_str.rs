//! JSON string escaping, shared by the request log's JSON layer and the console span exporter.

use std::fmt::Write as _;

/// Bytes that cannot appear raw in a JSON string (and DEL, escaped for readability).
const ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    // The lead byte of U+2028 / U+2029, checked in full below.
    t[0xe2] = true;
    t
};

/// Whether an 8-byte word holds a byte the escaper must look at: below 0x20, `"`, `\`, DEL,
/// or 0xe2 (the lead byte of U+2028 / U+2029). Exact as a yes/no answer (the classic
/// `haszero` / `hasless` word tricks), so clean words are skipped eight bytes at a time.
#[inline]
fn dirty(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    #[inline]
    fn zero_byte(v: u64) -> u64 {
        v.wrapping_sub(ONES) & !v
    }
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let hits = control
        | zero_byte(w ^ (ONES * u64::from(b'"')))
        | zero_byte(w ^ (ONES * u64::from(b'\\')))
        | zero_byte(w ^ (ONES * 0x7f))
        | zero_byte(w ^ (ONES * 0xe2));
    hits & HIGHS != 0
}

/// Writes `s` as a JSON string (with quotes): `"` and `\` escaped, control characters as
/// `\n`, `\t`, … or `\u00XX`, U+2028 and U+2029 as `\u2028`, `\u2029`, so any input gives one
/// valid JSON value on one line. Runs of plain bytes are copied whole, and found a word at a
/// time.
// Public as `towerscope::log::write_json_str`; crate-private without the `log` feature.
#[cfg_attr(not(feature = "log"), allow(unreachable_pub))]
pub fn write_json_str(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    // Most values (methods, routes, paths, ids, user agents) need no escape: one word check
    // per eight bytes (the tail padded with spaces) and a single copy.
    if clean(bytes) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        while let Some(word) = bytes.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            if dirty(u64::from_le_bytes(w)) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        if !ESCAPE[b as usize] {
            i += 1;
            continue;
        }
        let (esc, len): (&str, usize) = match b {
            b'"' => ("\\\"", 1),
            b'\\' => ("\\\\", 1),
            b'\n' => ("\\n", 1),
            b'\r' => ("\\r", 1),
            b'\t' => ("\\t", 1),
            0x08 => ("\\b", 1),
            0x0c => ("\\f", 1),
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                if bytes[i + 2] == 0xa8 {
                    ("\\u2028", 3)
                } else {
                    ("\\u2029", 3)
                }
            }
            0xe2 => {
                i += 1;
                continue;
            }
            _ => ("", 1),
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        i += len;
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether no byte of `bytes` needs an escape.
fn clean(bytes: &[u8]) -> bool {
    let word = |w: &[u8]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        u64::from_le_bytes(b)
    };
    if bytes.len() < 8 {
        // Padded with spaces, byte by byte (a copy of a variable length is a `memcpy` call).
        let mut w = u64::from_le_bytes([b' '; 8]);
        for (i, &b) in bytes.iter().enumerate() {
            w = (w & !(0xff << (8 * i))) | (u64::from(b) << (8 * i));
        }
        return !dirty(w);
    }
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        if dirty(word(w)) {
            return false;
        }
    }
    // The last eight bytes, overlapping the words already checked.
    words.remainder().is_empty() || !dirty(word(&bytes[bytes.len() - 8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clean_check_agrees_with_the_table_at_every_length_and_offset() {
        let plain = b"abcdefghijklmnopqrstuvwx";
        for len in 0..=plain.len() {
            assert!(clean(&plain[..len]), "{len}");
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = plain[..len].to_vec();
                    v[at] = b;
                    assert_eq!(clean(&v), !ESCAPE[b as usize], "{len} {at} {b}");
                }
            }
        }
    }
}
