//! The static Huffman code of HPACK string literals (RFC 7541 §5.2,
//! Appendix B).
//!
//! The code is canonical: within one code length, codes are consecutive in
//! symbol order, and each length's first code follows the last of the
//! length before. So the 257 code lengths of Appendix B are all it takes;
//! the codes themselves are derived from them at compile time, and the
//! tests check the derivation against the appendix's examples.

/// Code length in bits of each symbol: octets 0 to 255, then EOS (256).
#[rustfmt::skip]
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
     6, 10, 10, 12, 13,  6,  8, 11, 10, 10,  8, 11,  8,  6,  6,  6, // ' '
     5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8, 15,  6, 12, 10, // '0'
    13,  6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, // '@'
     7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8, 13, 19, 13, 14,  6, // 'P'
    15,  5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5, // '`'
     6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7, 15, 11, 14, 13, 28, // 'p'
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

const MAX_LEN: usize = 30;
const EOS: u16 = 256;

/// The canonical decoding tables: per length, the first code of that
/// length and where its symbols start in [`Canon::symbols`].
struct Canon {
    first_code: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    /// Symbols sorted by (length, symbol).
    symbols: [u16; 257],
}

const fn canon() -> Canon {
    let mut count = [0u16; MAX_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut first_code = [0u32; MAX_LEN + 1];
    let mut offset = [0u16; MAX_LEN + 1];
    let mut code = 0u32;
    let mut at = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        first_code[len] = code;
        offset[len] = at;
        code = (code + count[len] as u32) << 1;
        at += count[len];
        len += 1;
    }
    // A complete prefix code: the last code of the longest length is all
    // ones, so the codes neither overlap nor leave gaps.
    assert!(
        code == 1 << (MAX_LEN + 1),
        "Appendix B's lengths make a complete code"
    );
    let mut symbols = [0u16; 257];
    let mut next = offset;
    let mut s = 0;
    while s < 257 {
        let l = LENGTHS[s] as usize;
        symbols[next[l] as usize] = s as u16;
        next[l] += 1;
        s += 1;
    }
    Canon {
        first_code,
        count,
        offset,
        symbols,
    }
}

static CANON: Canon = canon();

/// Why a Huffman-coded string could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HuffmanError {
    /// The string holds EOS, or padding longer than 7 bits or not all ones
    /// (RFC 7541 §5.2: a decoding error).
    BadPadding,
    /// Decoding would pass `cap` octets.
    TooLong,
}

/// Appends the decoding of `input` to `out`, at most `cap` octets of it.
pub fn decode(input: &[u8], out: &mut Vec<u8>, cap: usize) -> Result<(), HuffmanError> {
    let c = &CANON;
    let start = out.len();
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in input {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            let index = code.wrapping_sub(c.first_code[len]);
            if index < u32::from(c.count[len]) {
                let sym = c.symbols[(c.offset[len] as u32 + index) as usize];
                if sym == EOS {
                    return Err(HuffmanError::BadPadding);
                }
                if out.len() - start >= cap {
                    return Err(HuffmanError::TooLong);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Unreachable for a complete code, but never index past it.
                return Err(HuffmanError::BadPadding);
            }
        }
    }
    // What is left is padding: the most significant bits of EOS (all
    // ones), shorter than 8 bits.
    if len > 7 || code != (1 << len) - 1 {
        return Err(HuffmanError::BadPadding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::hex;

    fn text(input: &str) -> String {
        let mut out = Vec::new();
        decode(&hex(input), &mut out, 1024).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decodes_the_appendix_c_strings() {
        // RFC 7541 C.4.1 to C.4.3 and C.6.1.
        assert_eq!(text("f1e3 c2e5 f23a 6ba0 ab90 f4ff"), "www.example.com");
        assert_eq!(text("a8eb 1064 9cbf"), "no-cache");
        assert_eq!(text("25a8 49e9 5ba9 7d7f"), "custom-key");
        assert_eq!(text("25a8 49e9 5bb8 e8b4 bf"), "custom-value");
        assert_eq!(text("6402"), "302");
        assert_eq!(text("aec3 771a 4b"), "private");
        assert_eq!(
            text("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"),
            "Mon, 21 Oct 2013 20:13:21 GMT"
        );
        assert_eq!(
            text("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
            "https://www.example.com"
        );
        assert_eq!(
            text(
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 \
                 3160 65c0 03ed 4ee5 b106 3d50 07"
            ),
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
        );
    }

    #[test]
    fn the_derived_codes_are_appendix_bs() {
        // A few rows of Appendix B, as (symbol, code, length).
        for (sym, code, len) in [
            (b'0', 0x0u32, 5u8),
            (b' ', 0x14, 6),
            (b'a', 0x3, 5),
            (b'%', 0x15, 6),
            (b'&', 0xf8, 8),
            (0u8, 0x1ff8, 13),
            (255u8, 0x3ffffee, 26),
        ] {
            assert_eq!(LENGTHS[sym as usize], len);
            let c = &CANON;
            let at = c.symbols[c.offset[len as usize] as usize..]
                .iter()
                .position(|&s| s == u16::from(sym))
                .unwrap();
            assert_eq!(c.first_code[len as usize] + at as u32, code, "symbol {sym}");
        }
    }

    #[test]
    fn every_octet_round_trips() {
        // Encode every octet with the derived code, then decode it.
        let c = &CANON;
        let mut code_of = [(0u32, 0u8); 257];
        for len in 1..=MAX_LEN {
            for i in 0..c.count[len] {
                let sym = c.symbols[(c.offset[len] + i) as usize];
                code_of[sym as usize] = (c.first_code[len] + u32::from(i), len as u8);
            }
        }
        let input: Vec<u8> = (0..=255).collect();
        let (mut acc, mut bits, mut enc) = (0u64, 0u32, Vec::new());
        for &b in &input {
            let (code, len) = code_of[b as usize];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                enc.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            enc.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        let mut out = Vec::new();
        decode(&enc, &mut out, 4096).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn bad_padding_and_bounds_are_errors() {
        let mut out = Vec::new();
        // Padding of zeros.
        assert_eq!(decode(&[0x00], &mut out, 16), Err(HuffmanError::BadPadding));
        // Eight bits of padding.
        out.clear();
        assert_eq!(
            decode(&hex("a8eb 1064 9cbf ff"), &mut out, 16),
            Err(HuffmanError::BadPadding)
        );
        // EOS itself.
        out.clear();
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out, 16),
            Err(HuffmanError::BadPadding)
        );
        out.clear();
        assert_eq!(
            decode(&hex("a8eb 1064 9cbf"), &mut out, 3),
            Err(HuffmanError::TooLong)
        );
    }
}
