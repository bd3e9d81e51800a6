//! The Go version a binary was built with, from its `.go.buildinfo`
//! section (which `-ldflags='-s -w'` keeps).
//!
//! Since Go 1.18 the section starts with a 32-byte header, `\xff Go
//! buildinf:`, the pointer size and a flags byte whose bit 1 says the
//! strings follow inline: the version, then the module information, each
//! a uvarint length and its bytes. Older binaries point at their strings
//! instead; they also predate the register ABI the probes need, so they
//! are not read.

const MAGIC: &[u8] = b"\xff Go buildinf:";
const HEADER: usize = 32;
const FLAG_INLINE: u8 = 2;

/// The version string (`go1.19.8`), if the section is one this reads.
pub fn version(section: &[u8]) -> Option<&str> {
    if section.len() < HEADER || !section.starts_with(MAGIC) {
        return None;
    }
    if section[MAGIC.len() + 1] & FLAG_INLINE == 0 {
        return None;
    }
    let (len, rest) = uvarint(&section[HEADER..])?;
    let bytes = rest.get(..usize::try_from(len).ok()?)?;
    std::str::from_utf8(bytes).ok()
}

/// A Go version's release line (`go1.19.8` → `go1.19`; `go1.27rc1` →
/// `go1.27`); `None` for a string that is not a Go release.
pub fn release_line(version: &str) -> Option<&str> {
    // A toolchain built from source says `devel go1.24-abc… <date>`.
    let version = version.strip_prefix("devel ").unwrap_or(version);
    let digits = version.strip_prefix("go1.")?;
    let minor = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    (minor > 0).then(|| &version[..4 + minor])
}

/// A release line's minor number: 19 for `go1.19`.
pub fn minor(line: &str) -> Option<u32> {
    line.strip_prefix("go1.")?.parse().ok()
}

fn uvarint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &b[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(version: &str, flags: u8) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.push(8);
        s.push(flags);
        s.resize(HEADER, 0);
        s.push(version.len() as u8);
        s.extend_from_slice(version.as_bytes());
        s.push(0);
        s
    }

    #[test]
    fn reads_the_inline_version() {
        assert_eq!(version(&section("go1.19.8", 2)), Some("go1.19.8"));
        assert_eq!(version(&section("go1.27.3", 3)), Some("go1.27.3"));
        // Pointer-style (before Go 1.18): not read.
        assert_eq!(version(&section("go1.16", 0)), None);
        assert_eq!(version(b"\xff Go buildinf:"), None);
        let mut cut = section("go1.19.8", 2);
        cut.truncate(HEADER + 4);
        assert_eq!(version(&cut), None);
    }

    #[test]
    fn release_lines() {
        assert_eq!(release_line("go1.19.8"), Some("go1.19"));
        assert_eq!(release_line("go1.27.3"), Some("go1.27"));
        assert_eq!(release_line("go1.27rc1"), Some("go1.27"));
        assert_eq!(release_line("go1.22"), Some("go1.22"));
        assert_eq!(release_line("devel +abc"), None);
        assert_eq!(
            release_line("devel go1.24-3e5f1a2 Tue Jan 7"),
            Some("go1.24")
        );
        assert_eq!(minor("go1.19"), Some(19));
        assert_eq!(minor("go1.100"), Some(100));
        assert_eq!(minor("go2.0"), None);
        assert_eq!(release_line("go1."), None);
    }
}
