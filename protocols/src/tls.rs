//! Recognising TLS on the wire, so that a connection whose bytes are
//! ciphertext waits for its plaintext (from the TLS library's probes)
//! instead of being given up as an unknown protocol; and the protocol
//! version the server chose, read from its ServerHello in the clear.

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

/// The version a ServerHello at the start of `bytes` selects, as
/// OpenTelemetry writes it (`tls.protocol.version`): "1.3" from the
/// `supported_versions` extension, else the legacy version field. `None`
/// unless `bytes` starts with a handshake record holding a ServerHello
/// (or a HelloRetryRequest, its TLS 1.3 twin), whole up to that field.
pub fn server_hello_version(bytes: &[u8]) -> Option<&'static str> {
    // Record header: type 22 (handshake), version 3.x, length.
    let (&[22, 3, _, _, _], record) = bytes.split_first_chunk::<5>()? else {
        return None;
    };
    // Handshake header: type 2 (ServerHello), 24-bit length; the whole
    // message must be here, or missing extensions could not be told from
    // extensions cut off.
    let (&[2, l0, l1, l2], rest) = record.split_first_chunk::<4>()? else {
        return None;
    };
    let hello = rest.get(..u32::from_be_bytes([0, l0, l1, l2]) as usize)?;
    let (&[major, minor], rest) = hello.split_first_chunk::<2>()?;
    let legacy = u16::from_be_bytes([major, minor]);
    // random (32), session id (length-prefixed), cipher suite (2),
    // compression method (1).
    let rest = rest.get(32..)?;
    let (&[id_len], rest) = rest.split_first_chunk::<1>()?;
    let rest = rest.get(usize::from(id_len) + 3..)?;
    let chosen = if rest.is_empty() {
        // No extensions at all (TLS 1.2 and older may omit them).
        legacy
    } else {
        let (&len, exts) = rest.split_first_chunk::<2>()?;
        let exts = exts.get(..usize::from(u16::from_be_bytes(len)))?;
        supported_version(exts).ok()?.unwrap_or(legacy)
    };
    match chosen {
        0x0304 => Some("1.3"),
        0x0303 => Some("1.2"),
        0x0302 => Some("1.1"),
        0x0301 => Some("1.0"),
        _ => None,
    }
}

/// The `supported_versions` (43) extension's single version, as a server
/// sends it, if it has one; `Err` when the extensions are malformed.
fn supported_version(mut exts: &[u8]) -> Result<Option<u16>, ()> {
    while !exts.is_empty() {
        let (&[t0, t1, l0, l1], rest) = exts.split_first_chunk::<4>().ok_or(())?;
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let data = rest.get(..len).ok_or(())?;
        if u16::from_be_bytes([t0, t1]) == 43 {
            let &[v0, v1] = data else {
                return Err(());
            };
            return Ok(Some(u16::from_be_bytes([v0, v1])));
        }
        exts = &rest[len..];
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ServerHello record: `legacy` version, a 32-byte session id, and
    /// `exts` as its extensions block (none when `None`).
    fn server_hello(legacy: [u8; 2], exts: Option<&[u8]>) -> Vec<u8> {
        let mut body = legacy.to_vec();
        body.extend([0x5a; 32]);
        body.push(32);
        body.extend([0x11; 32]);
        body.extend([0x13, 0x01, 0x00]);
        if let Some(e) = exts {
            body.extend((e.len() as u16).to_be_bytes());
            body.extend(e);
        }
        let mut hs = vec![2, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend(body);
        let mut rec = vec![22, 3, 3, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend(hs);
        rec
    }

    #[test]
    fn server_hello_versions() {
        // TLS 1.3: legacy 1.2, the real one in supported_versions, after
        // a key_share extension.
        let exts13 = [0, 51, 0, 4, 0, 29, 0, 0, 0, 43, 0, 2, 3, 4];
        let hello = server_hello([3, 3], Some(&exts13));
        assert_eq!(server_hello_version(&hello), Some("1.3"));
        // Followed by more records in the same read.
        let mut more = hello.clone();
        more.extend(b"\x14\x03\x03\x00\x01\x01");
        assert_eq!(server_hello_version(&more), Some("1.3"));
        // TLS 1.2, with and without extensions.
        let exts12 = [0xff, 1, 0, 1, 0];
        assert_eq!(
            server_hello_version(&server_hello([3, 3], Some(&exts12))),
            Some("1.2")
        );
        assert_eq!(
            server_hello_version(&server_hello([3, 3], None)),
            Some("1.2")
        );
        // Cut anywhere: nothing, and no panic.
        for n in 0..hello.len() {
            assert_eq!(server_hello_version(&hello[..n]), None, "{n}");
        }
        // A ClientHello, an application-data record, garbage.
        let mut client = hello.clone();
        client[5] = 1;
        assert_eq!(server_hello_version(&client), None);
        assert_eq!(server_hello_version(b"\x17\x03\x03\x00\x45"), None);
        assert_eq!(server_hello_version(b"HTTP/1.1 200 OK\r\n"), None);
        // A malformed extension length.
        let bad = [0, 43, 0, 9, 3, 4];
        assert_eq!(
            server_hello_version(&server_hello([3, 3], Some(&bad))),
            None
        );
    }

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
