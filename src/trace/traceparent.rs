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

/// Where each hex byte of a `traceparent` starts: version, 16 of trace id, 8 of parent id,
/// flags.
const PAIRS: [usize; 26] = {
    let mut p = [0usize; 26];
    let mut i = 0;
    while i < 16 {
        p[1 + i] = 3 + 2 * i;
        i += 1;
    }
    let mut i = 0;
    while i < 8 {
        p[17 + i] = 36 + 2 * i;
        i += 1;
    }
    p[25] = 53;
    p
};

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
        // The 26 bytes of version, trace id, parent id and flags, decoded in one pass (fixed
        // offsets, a table lookup per digit, one validity check at the end).
        let mut bytes = [0u8; 26];
        let mut bad = 0u8;
        for (out, &at) in bytes.iter_mut().zip(PAIRS.iter()) {
            let (hi, lo) = (
                NIBBLE[usize::from(head[at])],
                NIBBLE[usize::from(head[at + 1])],
            );
            bad |= hi | lo;
            *out = (hi << 4) | (lo & 0xf);
        }
        if bad & 0xf0 != 0 {
            return None;
        }
        let version = bytes[0];
        if version == 0xff
            || (version == 0 && v.len() != TRACEPARENT_LEN)
            || (v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-')
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&bytes[1..17]);
        let mut parent_id = [0u8; 8];
        parent_id.copy_from_slice(&bytes[17..25]);
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            version,
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags: TraceFlags(bytes[25]),
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
