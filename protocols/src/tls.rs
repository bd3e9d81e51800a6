//! Recognising TLS on the wire, so that a connection whose bytes are
//! ciphertext waits for its plaintext (from the TLS library's probes)
//! instead of being given up as an unknown protocol.

/// Does `bytes` start with a TLS record header: content type (change
/// cipher spec, alert, handshake, application data), version 3.x, and a
/// length no record exceeds? A read shorter than a header counts when what
/// it has fits: nginx peeks at a TLS port's first byte alone.
pub fn looks_like_record(bytes: &[u8]) -> bool {
    let content_type = |t: &u8| (0x14..=0x17).contains(t);
    match bytes {
        [t, 3, minor, hi, lo, ..] => {
            content_type(t) && *minor <= 4 && u16::from_be_bytes([*hi, *lo]) <= 16384 + 2048
        }
        [t] | [t, 3] | [t, 3, _] | [t, 3, _, _] => content_type(t),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_not() {
        // A ClientHello and an application-data record.
        assert!(looks_like_record(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"));
        assert!(looks_like_record(b"\x17\x03\x03\x00\x45"));
        assert!(!looks_like_record(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_record(b"\x16"), "nginx's one-byte peek");
        assert!(looks_like_record(b"\x16\x03\x01"));
        assert!(!looks_like_record(b"\x16\x04\x01"));
        assert!(!looks_like_record(b""));
        assert!(!looks_like_record(b"\x16\x03\x01\xff\xff"));
        assert!(!looks_like_record(b"*1\r\n$4\r\nPING\r\n"));
    }
}
