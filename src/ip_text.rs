//! An IP address as text on the stack, for the request path (the request log's `client_ip`,
//! the server span's `client.address`).

use std::net::IpAddr;

/// An address as text on the stack, as `Display` writes it (IPv4 without the formatting
/// machinery: this runs for every request).
pub(crate) struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    pub(crate) fn of(ip: IpAddr) -> Self {
        let mut t = Self {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if o >= 100 {
                        t.push(b'0' + o / 100);
                    }
                    if o >= 10 {
                        t.push(b'0' + o / 10 % 10);
                    }
                    t.push(b'0' + o % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut rest = &mut t.buf[..];
                let _ = write!(rest, "{v6}");
                let left = rest.len();
                t.len = t.buf.len() - left;
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// Appends the text in quotes (ASCII: no escape). One copy of the checked text: the
    /// check of at most 45 ASCII bytes costs less than pushing them one `char` at a time
    /// (callgrind).
    #[cfg(feature = "log")]
    pub(crate) fn push_quoted(&self, out: &mut String) {
        out.reserve(self.len + 2);
        out.push('"');
        out.push_str(self.as_str());
        out.push('"');
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.3.255",
            "::1",
            "2001:db8::ff00:42:8329",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
            #[cfg(feature = "log")]
            {
                let mut out = String::from("x");
                IpText::of(ip).push_quoted(&mut out);
                assert_eq!(out, format!("x\"{ip}\""));
            }
        }
    }
}
