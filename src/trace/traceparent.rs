//! W3C Trace Context `traceparent`: ids, flags, and the Recommendation's processing model.

use std::fmt;

/// A 16-byte trace id; never all zeros when parsed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span (parent) id; never all zeros when parsed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpanId(pub [u8; 8]);

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// Lowercase hex digits on the stack (ids as text without allocating).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    fn of(bytes: &[u8]) -> Self {
        let mut out = [b'0'; N];
        for (i, b) in bytes.iter().take(N / 2).enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        Self(out)
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TraceId {
    /// The 32 hex digits, on the stack.
    pub fn hex(&self) -> Hex<32> {
        Hex::of(&self.0)
    }

    /// Parses 32 lowercase hex digits; all zeros is invalid.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        lower_hex(s.as_bytes(), &mut out)?;
        (out != [0; 16]).then_some(Self(out))
    }
}

impl SpanId {
    /// The 16 hex digits, on the stack.
    pub fn hex(&self) -> Hex<16> {
        Hex::of(&self.0)
    }

    /// Parses 16 lowercase hex digits; all zeros is invalid.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 8];
        lower_hex(s.as_bytes(), &mut out)?;
        (out != [0; 8]).then_some(Self(out))
    }
}

/// The value of a lowercase hex digit; 0xff for any other byte.
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decodes exactly `2 * out.len()` lowercase hex digits (a table lookup per digit, one check
/// at the end).
fn lower_hex(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != 2 * out.len() {
        return None;
    }
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0xf);
    }
    (bad & 0xf0 == 0).then_some(())
}

/// Trace flags: bit 0 is `sampled`, bit 1 `random` (Level 2); other bits are kept as received
/// but never sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct TraceFlags(pub u8);

impl TraceFlags {
    /// The `sampled` flag.
    pub const SAMPLED: u8 = 0x01;
    /// The `random` flag (Trace Context Level 2): the trace id's right 7 bytes are random.
    pub const RANDOM: u8 = 0x02;

    /// Whether the caller may have recorded the trace.
    pub fn sampled(self) -> bool {
        self.0 & Self::SAMPLED != 0
    }
}

/// A parsed `traceparent`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TraceParent {
    /// The version received (`00`, or a higher one parsed for forward compatibility).
    pub version: u8,
    /// The trace id.
    pub trace_id: TraceId,
    /// The caller's span id: the parent of the server span.
    pub parent_id: SpanId,
    /// The flags received.
    pub flags: TraceFlags,
}

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

const LANES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Per byte of `x`: 0x80 where the byte is at least `n`, else 0 (exact when every byte is
/// below 0x80; callers refuse the others).
const fn at_least(x: u64, n: u8) -> u64 {
    x.wrapping_add((0x80 - n as u64) * LANES) & HIGH
}

/// Decodes 8 lowercase hex digits into 4 bytes, a word at a time (about a third of the work of
/// a table lookup per digit); `None` if any byte is not `[0-9a-f]`.
fn hex8(digits: &[u8; 8]) -> Option<[u8; 4]> {
    let x = u64::from_le_bytes(*digits);
    let digit = at_least(x, b'0') & !at_least(x, b'9' + 1);
    let letter = at_least(x, b'a') & !at_least(x, b'f' + 1);
    // Bytes of 0x80 and above would carry across lanes in `at_least`: refused first.
    if x & HIGH != 0 || digit | letter != HIGH {
        return None;
    }
    // Each digit's value in its byte: the low nibble, plus 9 for a letter.
    let nib = (x & (0x0f * LANES)) + (letter >> 7) * 9;
    // Pairs of digits (first in the lower byte) into one byte per 16-bit lane, then together.
    let pairs = ((nib << 4) | (nib >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let packed = (quads | (quads >> 16)) as u32;
    Some(packed.to_le_bytes())
}

/// The byte of two lowercase hex digits, `None` otherwise.
fn hex2(hi: u8, lo: u8) -> Option<u8> {
    let (hi, lo) = (NIBBLE[usize::from(hi)], NIBBLE[usize::from(lo)]);
    ((hi | lo) & 0xf0 == 0).then_some((hi << 4) | lo)
}

impl TraceParent {
    /// Parses a `traceparent` value by the W3C processing model: optional whitespace (space,
    /// tab) around it; lowercase hex only; version `ff` invalid; all-zero ids invalid; version
    /// `00` exactly 55 characters; a higher version at least 55, with `-` after the flags when
    /// longer (its extra fields ignored).
    pub fn parse(value: &str) -> Option<Self> {
        Self::parse_bytes(value.as_bytes())
    }

    /// [`parse`](Self::parse) on a header value's bytes (anything but the grammar's ASCII is
    /// invalid anyway, so the bytes need no UTF-8 check first).
    pub fn parse_bytes(value: &[u8]) -> Option<Self> {
        let ows = |c: &u8| *c == b' ' || *c == b'\t';
        let start = value.iter().position(|c| !ows(c)).unwrap_or(value.len());
        let end = value.iter().rposition(|c| !ows(c)).map_or(start, |e| e + 1);
        let v = &value[start..end];
        if v.len() < TRACEPARENT_LEN {
            return None;
        }
        let head: &[u8; TRACEPARENT_LEN] = v[..TRACEPARENT_LEN].try_into().ok()?;
        if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return None;
        }
        let version = hex2(head[0], head[1])?;
        let flags = hex2(head[53], head[54])?;
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        for (out, at) in trace_id.chunks_exact_mut(4).zip([3, 11, 19, 27]) {
            out.copy_from_slice(&hex8(head[at..at + 8].try_into().ok()?)?);
        }
        for (out, at) in parent_id.chunks_exact_mut(4).zip([36, 44]) {
            out.copy_from_slice(&hex8(head[at..at + 8].try_into().ok()?)?);
        }
        if version == 0xff
            || (version == 0 && v.len() != TRACEPARENT_LEN)
            || (v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-')
        {
            return None;
        }
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            version,
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags: TraceFlags(flags),
        })
    }

    /// The version-00 form for sending on: `00-{trace}-{span}-{flags}`, with only the defined
    /// flags (`sampled`, `random`).
    pub fn header(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
        format!(
            "00-{trace_id}-{span_id}-{:02x}",
            flags.0 & (TraceFlags::SAMPLED | TraceFlags::RANDOM)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{hex8, NIBBLE};

    /// The digit-by-digit decode `hex8` must agree with.
    fn reference(digits: &[u8; 8]) -> Option<[u8; 4]> {
        let mut out = [0u8; 4];
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
            if (hi | lo) & 0xf0 != 0 {
                return None;
            }
            *o = (hi << 4) | lo;
        }
        Some(out)
    }

    #[test]
    fn word_at_a_time_hex_agrees_with_the_table() {
        // Every byte value in every position, among valid digits and among other odd bytes.
        for fill in [*b"0123abcd", *b"f9e8d7c6", *b"ffffffff", *b"00000000"] {
            for at in 0..8 {
                for b in 0..=255u8 {
                    let mut d = fill;
                    d[at] = b;
                    assert_eq!(hex8(&d), reference(&d), "{d:?}");
                }
            }
        }
        // Random strings drawn mostly from the hex alphabet and its neighbours.
        let alphabet = b"0123456789abcdef/:`gAF\x80\xff";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200_000 {
            let d: [u8; 8] = std::array::from_fn(|_| alphabet[rng.usize(..alphabet.len())]);
            assert_eq!(hex8(&d), reference(&d), "{d:?}");
        }
        assert_eq!(hex8(b"4bf92f35"), Some([0x4b, 0xf9, 0x2f, 0x35]));
    }

    #[test]
    fn every_digit_of_both_ids_is_checked_and_placed() {
        use super::{SpanId, TraceId, TraceParent};
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let tp = TraceParent::parse(valid).unwrap();
        assert_eq!(
            tp.trace_id,
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert_eq!(tp.parent_id, SpanId::from_hex("b7ad6b7169203331").unwrap());
        // A bad digit anywhere in either id (any of the six words) makes it invalid; a good
        // one changes exactly that digit of the id.
        for at in (3..35).chain(36..52) {
            for bad in [b'g', b'G', b'A', b'/', b':', b' ', 0x80u8] {
                let mut v = valid.as_bytes().to_vec();
                v[at] = bad;
                assert_eq!(TraceParent::parse_bytes(&v), None, "{at} {bad}");
            }
            let mut v = valid.as_bytes().to_vec();
            v[at] = if v[at] == b'f' { b'0' } else { b'f' };
            let changed = TraceParent::parse_bytes(&v).unwrap();
            let text = String::from_utf8(v).unwrap();
            assert_eq!(changed.trace_id.to_string(), text[3..35], "{at}");
            assert_eq!(changed.parent_id.to_string(), text[36..52], "{at}");
        }
    }
}
