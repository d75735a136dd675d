//! gzip at its fastest level, for the `/metrics` answer and the OTLP export's request bodies:
//! both are repetitive text or protobuf (the same names and labels again and again), which even
//! the fastest level shrinks about tenfold.

use std::io::Write;

/// `data` gzipped onto the end of `out`.
pub(crate) fn gzip(data: &[u8], out: &mut Vec<u8>) {
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    // Writing to a vector cannot fail.
    let _ = encoder.write_all(data);
    let _ = encoder.finish();
}
