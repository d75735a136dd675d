//! W3C Baggage: application key/value pairs carried with a request.
//!
//! Kept within the specification's limits: up to 64 members and 8192 bytes; a member that would
//! cross a limit is dropped whole (never cut), and so are malformed members. Baggage is never
//! copied into logs, metrics or span attributes unless the application allow-lists keys.

/// At most this many members are kept.
pub const MAX_MEMBERS: usize = 64;
/// At most this many bytes of `baggage` (members joined by `,`) are kept.
pub const MAX_BYTES: usize = 8192;

/// One member: key, percent-decoded value, and its properties as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The key (an HTTP token).
    pub key: String,
    /// The value, percent-decoded.
    pub value: String,
    /// `;`-separated properties, as received (empty when none).
    pub properties: String,
}

/// Parsed baggage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    members: Vec<Member>,
    /// The members as received, for sending on unchanged.
    raw: Vec<String>,
}

fn tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn baggage_octet(c: u8) -> bool {
    matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

fn ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// Percent-decodes `v` (W3C Baggage values; also the OTLP exporter's header values); `None`
/// for a malformed escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let d = |c: u8| (c as char).to_digit(16);
            out.push((d(hex[0])? * 16 + d(hex[1])?) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Validates one `key OWS "=" OWS value *(OWS ";" OWS property)` member.
fn parse_member(m: &str) -> Option<Member> {
    let (kv, properties) = match m.split_once(';') {
        Some((kv, props)) => (kv, props),
        None => (m, ""),
    };
    let (k, v) = kv.split_once('=')?;
    let (k, v) = (ows(k), ows(v));
    if k.is_empty() || !k.bytes().all(tchar) || !v.bytes().all(baggage_octet) {
        return None;
    }
    for p in properties.split(';') {
        let p = ows(p);
        let (pk, pv) = match p.split_once('=') {
            Some((pk, pv)) => (ows(pk), Some(ows(pv))),
            None => (p, None),
        };
        if pk.is_empty() || !pk.bytes().all(tchar) {
            if properties.is_empty() {
                break;
            }
            return None;
        }
        if let Some(pv) = pv {
            if !pv.bytes().all(baggage_octet) {
                return None;
            }
        }
    }
    Some(Member {
        key: k.to_owned(),
        value: percent_decode(v)?,
        properties: ows(properties).to_owned(),
    })
}

impl Baggage {
    /// Parses the `baggage` header values received, in order.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut out = Self::default();
        let mut bytes = 0;
        for value in values {
            for m in value.split(',') {
                let m = ows(m);
                if m.is_empty() {
                    continue;
                }
                let Some(member) = parse_member(m) else {
                    continue;
                };
                let cost = m.len() + usize::from(!out.raw.is_empty());
                if out.members.len() == MAX_MEMBERS || bytes + cost > MAX_BYTES {
                    continue;
                }
                bytes += cost;
                out.members.push(member);
                out.raw.push(m.to_owned());
            }
        }
        out
    }

    /// The members, in order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The value of `key`, if present (the first one).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.value.as_str())
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The header value to send on (`None` when empty).
    pub fn header(&self) -> Option<String> {
        (!self.raw.is_empty()).then(|| self.raw.join(","))
    }
}
