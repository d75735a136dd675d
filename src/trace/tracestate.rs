//! W3C Trace Context `tracestate`: vendor entries, validated whole.

/// At most this many list-members.
pub const MAX_MEMBERS: usize = 32;

/// A validated `tracestate`: its members in order, as received (the leftmost is the most
/// recent vendor's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceState {
    members: Vec<(String, String)>,
}

fn key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` or `tenant-id@system-id`.
fn valid_key(k: &str) -> bool {
    let b = k.as_bytes();
    match k.split_once('@') {
        None => {
            !b.is_empty()
                && b.len() <= 256
                && b[0].is_ascii_lowercase()
                && b.iter().all(|&c| key_char(c))
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            !t.is_empty()
                && t.len() <= 241
                && (t[0].is_ascii_lowercase() || t[0].is_ascii_digit())
                && t.iter().all(|&c| key_char(c))
                && !s.is_empty()
                && s.len() <= 14
                && s[0].is_ascii_lowercase()
                && s.iter().all(|&c| key_char(c))
        }
    }
}

/// `0*255(chr) nblk-chr`: printable ASCII but `,` and `=`, spaces allowed except at the end.
fn valid_value(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b[b.len() - 1] != b' '
}

impl TraceState {
    /// Parses the `tracestate` header values received, combined in order. Empty members are
    /// allowed and skipped; any invalid member, a duplicate key, or more than 32 members
    /// makes the whole header invalid (`None`).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut members: Vec<(String, String)> = Vec::new();
        for value in values {
            for member in value.split(',') {
                let member = member.trim_matches(|c| c == ' ' || c == '\t');
                if member.is_empty() {
                    continue;
                }
                let (k, v) = member.split_once('=')?;
                if !valid_key(k) || !valid_value(v) {
                    return None;
                }
                if members.len() == MAX_MEMBERS || members.iter().any(|(key, _)| key == k) {
                    return None;
                }
                members.push((k.to_owned(), v.to_owned()));
            }
        }
        Some(Self { members })
    }

    /// The members, leftmost first.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The header value to send on (`None` when empty: an empty `tracestate` is not sent).
    pub fn header(&self) -> Option<String> {
        if self.members.is_empty() {
            return None;
        }
        let mut out = String::new();
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        Some(out)
    }
}
