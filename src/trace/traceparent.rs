//! W3C Trace Context `traceparent`: ids, flags, and the Recommendation's processing model.

use std::fmt;

/// A 16-byte trace id; never all zeros when parsed.
///
/// Aligned like the 16-byte register it is made in and read back as, so that it is always
/// stored whole: at a byte offset (inside a `TraceParent`), it was stored in two halves and
/// read back whole right after, and the read waited for both writes (perf).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(align(16))]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span (parent) id; never all zeros when parsed. Aligned as a 64-bit word, for the
/// same reason as [`TraceId`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(align(8))]
pub struct SpanId(pub [u8; 8]);

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

/// Lowercase hex digits on the stack (ids as text without allocating). Aligned to a word so
/// that the UTF-8 check of [`Hex::as_str`] takes its word-at-a-time path from the first byte.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(align(8))]
pub struct Hex<const N: usize>([u8; N]);

/// Eight bytes as sixteen lowercase hex digits (the request id's digits, too).
#[cfg(feature = "log")]
pub(crate) fn hex_digits(bytes: [u8; 8]) -> [u8; 16] {
    simd::encode8(&bytes)
}

impl<const N: usize> Hex<N> {
    /// The digits of `bytes` (`N / 2` of them), eight bytes at a time.
    fn of(bytes: &[u8]) -> Self {
        let mut out = [b'0'; N];
        for (digits, eight) in out.chunks_exact_mut(16).zip(bytes.chunks_exact(8)) {
            let eight = <[u8; 8]>::try_from(eight).unwrap_or_default();
            digits.copy_from_slice(&simd::encode8(&eight));
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

/// Hex digits sixteen at a time with SSE2 on x86-64 (part of every x86-64 CPU; `safe_arch`
/// wraps its intrinsics as safe functions, this crate having no unsafe code); a table lookup
/// per digit elsewhere. Parsing a `traceparent` takes about 160 instructions instead of 325
/// with eight digits per 64-bit word (callgrind).
#[cfg(target_arch = "x86_64")]
mod simd {
    use safe_arch::{
        add_i8_m128i, bitand_m128i, bitor_m128i, cmp_eq_mask_i8_m128i, cmp_gt_mask_i8_m128i,
        get_i64_from_m128i_s, m128i, min_u8_m128i, move_mask_i8_m128i, pack_i16_to_u8_m128i,
        set_i64_m128i_s, set_splat_i16_m128i, set_splat_i8_m128i, shl_imm_u16_m128i,
        shr_imm_u16_m128i, sub_i8_m128i, unpack_low_i8_m128i,
    };

    /// Sixteen lowercase hex digits into eight bytes; `None` if any byte is not `[0-9a-f]`.
    pub(super) fn decode16(digits: &[u8; 16]) -> Option<[u8; 8]> {
        let pairs = pairs(m128i::from(*digits))?;
        let packed = pack_i16_to_u8_m128i(pairs, pairs);
        Some(get_i64_from_m128i_s(packed).to_le_bytes())
    }

    /// Thirty-two lowercase hex digits into sixteen bytes, made in one register (and so
    /// stored at once: a trace id written in two halves and read whole right after stalls the
    /// read until the writes land).
    pub(super) fn decode32(digits: &[u8; 32]) -> Option<[u8; 16]> {
        let (a, b) = digits.split_at(16);
        let a = pairs(m128i::from(<[u8; 16]>::try_from(a).ok()?))?;
        let b = pairs(m128i::from(<[u8; 16]>::try_from(b).ok()?))?;
        Some(pack_i16_to_u8_m128i(a, b).into())
    }

    /// Sixteen digits checked and decoded: each 16-bit lane holds its pair's byte.
    #[inline(always)]
    fn pairs(v: m128i) -> Option<m128i> {
        // Per byte, wrapping: its distance from '0' and from 'a'. A digit is at most 9 above
        // '0', a letter at most 5 above 'a' (unsigned: anything below wraps high).
        let digit = sub_i8_m128i(v, set_splat_i8_m128i(b'0' as i8));
        let letter = sub_i8_m128i(v, set_splat_i8_m128i(b'a' as i8));
        let is_digit = cmp_eq_mask_i8_m128i(min_u8_m128i(digit, set_splat_i8_m128i(9)), digit);
        let is_letter = cmp_eq_mask_i8_m128i(min_u8_m128i(letter, set_splat_i8_m128i(5)), letter);
        if move_mask_i8_m128i(bitor_m128i(is_digit, is_letter)) != 0xffff {
            return None;
        }
        // A letter's value is its distance from '0' less 39 ('a' - '0' - 10).
        let nib = sub_i8_m128i(digit, bitand_m128i(is_letter, set_splat_i8_m128i(39)));
        // Each 16-bit lane holds a pair, the first digit in its lower byte: the pair's byte
        // into the lane's lower byte.
        let pairs = bitor_m128i(shl_imm_u16_m128i::<4>(nib), shr_imm_u16_m128i::<8>(nib));
        Some(bitand_m128i(pairs, set_splat_i16_m128i(0xff)))
    }

    /// Eight bytes as sixteen lowercase hex digits.
    pub(super) fn encode8(bytes: &[u8; 8]) -> [u8; 16] {
        let v = set_i64_m128i_s(i64::from_le_bytes(*bytes));
        let low = set_splat_i8_m128i(0x0f);
        let hi = bitand_m128i(shr_imm_u16_m128i::<4>(v), low);
        let lo = bitand_m128i(v, low);
        // Each byte's high nibble, then its low one.
        let nibbles = unpack_low_i8_m128i(hi, lo);
        // '0' + n, and 39 more for a letter ('a' - '0' - 10).
        let letters = bitand_m128i(
            cmp_gt_mask_i8_m128i(nibbles, set_splat_i8_m128i(9)),
            set_splat_i8_m128i(39),
        );
        let digits = add_i8_m128i(
            add_i8_m128i(nibbles, set_splat_i8_m128i(b'0' as i8)),
            letters,
        );
        digits.into()
    }
}

/// [`simd`] elsewhere: a table lookup per digit.
#[cfg(not(target_arch = "x86_64"))]
mod simd {
    const HEX: &[u8; 16] = b"0123456789abcdef";

    pub(super) fn decode16(digits: &[u8; 16]) -> Option<[u8; 8]> {
        let mut out = [0u8; 8];
        super::lower_hex(digits, &mut out)?;
        Some(out)
    }

    pub(super) fn decode32(digits: &[u8; 32]) -> Option<[u8; 16]> {
        let mut out = [0u8; 16];
        super::lower_hex(digits, &mut out)?;
        Some(out)
    }

    pub(super) fn encode8(bytes: &[u8; 8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, b) in bytes.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        out
    }
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
    #[inline]
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
        let trace_id = simd::decode32(head[3..35].try_into().ok()?)?;
        let parent_id = simd::decode16(head[36..52].try_into().ok()?)?;
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
        // Written piece by piece into one allocation of the exact length (no formatter).
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let f = flags.0 & (TraceFlags::SAMPLED | TraceFlags::RANDOM);
        let mut out = String::with_capacity(TRACEPARENT_LEN);
        out.push_str("00-");
        out.push_str(trace_id.hex().as_str());
        out.push('-');
        out.push_str(span_id.hex().as_str());
        out.push('-');
        out.push(char::from(DIGITS[usize::from(f >> 4)]));
        out.push(char::from(DIGITS[usize::from(f & 0xf)]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{simd, NIBBLE};

    /// The digit-by-digit decode the sixteen-at-a-time one must agree with.
    fn reference(digits: &[u8; 16]) -> Option<[u8; 8]> {
        let mut out = [0u8; 8];
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
            if (hi | lo) & 0xf0 != 0 {
                return None;
            }
            *o = (hi << 4) | lo;
        }
        Some(out)
    }

    /// Every byte value in every position of `fill`, then `n` random strings drawn mostly from
    /// the hex alphabet and its neighbours: `check` on each.
    fn cases<const N: usize>(fill: [u8; N], n: usize, seed: u64, mut check: impl FnMut(&[u8; N])) {
        for at in 0..N {
            for b in 0..=255u8 {
                let mut d = fill;
                d[at] = b;
                check(&d);
            }
        }
        let alphabet = b"0123456789abcdef/:`gAF\x80\xff";
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..n {
            check(&std::array::from_fn(|_| {
                alphabet[rng.usize(..alphabet.len())]
            }));
        }
    }

    #[test]
    fn sixteen_digits_at_a_time_agree_with_the_table() {
        // Among valid digits and among other odd bytes.
        for (fill, seed) in [
            (*b"0123abcd4567ef89", 7),
            (*b"f9e8d7c6b5a49382", 8),
            (*b"ffffffffffffffff", 9),
            (*b"0000000000000000", 10),
        ] {
            cases(fill, 50_000, seed, |d| {
                assert_eq!(simd::decode16(d), reference(d), "{d:?}")
            });
        }
        assert_eq!(
            simd::decode16(b"4bf92f3577b34da6"),
            Some([0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6])
        );
    }

    #[test]
    fn thirty_two_digits_at_a_time_agree_with_the_table() {
        // Both halves through the sixteen-digit reference.
        let whole = |d: &[u8; 32]| -> Option<[u8; 16]> {
            let a = reference(d[..16].try_into().unwrap())?;
            let b = reference(d[16..].try_into().unwrap())?;
            Some(std::array::from_fn(|i| if i < 8 { a[i] } else { b[i - 8] }))
        };
        cases(*b"4bf92f3577b34da6a3ce929d0e0e4736", 100_000, 9, |d| {
            assert_eq!(simd::decode32(d), whole(d), "{d:?}")
        });
    }

    #[test]
    fn eight_bytes_are_written_as_sixteen_lowercase_digits() {
        let mut rng = fastrand::Rng::with_seed(11);
        let check = |bytes: [u8; 8]| {
            let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(simd::encode8(&bytes), want.as_bytes(), "{bytes:?}");
        };
        // Every byte value in every position, then random ones.
        for at in 0..8 {
            for b in 0..=255u8 {
                let mut bytes = [0x5a; 8];
                bytes[at] = b;
                check(bytes);
            }
        }
        for _ in 0..100_000 {
            check(rng.u64(..).to_le_bytes());
        }
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
