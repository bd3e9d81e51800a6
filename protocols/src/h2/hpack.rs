//! An HPACK decoder (RFC 7541) for a passive observer: one per connection
//! and direction, fed every header block in order.
//!
//! It never reports a wrong field. A decoder that saw its connection from
//! the start ([`Decoder::new`]) knows the dynamic table exactly. One that
//! joined mid-stream, or whose connection lost a header block, does not
//! ([`Decoder::joined`], [`Decoder::lost`]): it keeps the entries it saw
//! inserted since, newest first. That list is always the front of the
//! real table, because entries enter at the front and leave from the back,
//! and an encoder only references entries that exist. So a reference into
//! that front is certain, and one past it decodes to [`Field::Unknown`]:
//! static-table and literal fields are always certain.

use std::collections::VecDeque;

use super::huffman;

/// RFC 7541 Appendix A.
#[rustfmt::skip]
const STATIC: [(&str, &str); 61] = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"),
    (":status", "200"), (":status", "204"), (":status", "206"), (":status", "304"),
    (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
];

/// The table size every HTTP/2 connection starts with (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// The most table this decoder keeps, whatever the peers agree: past it an
/// encoder's table is larger than ours, and its oldest entries unknown.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Most decoded octets one header block may produce.
pub const MAX_DECODED: usize = 64 * 1024;
/// Most fields kept of one header block (the rest still update the table).
pub const MAX_FIELDS: usize = 128;

/// Why a header block could not be decoded. The table is unknown after
/// it, so the decoder continues as if it had joined mid-stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpackError {
    /// The block ends inside a representation.
    Truncated,
    /// Index 0, or past the table of a decoder that knows its table.
    BadIndex,
    /// An integer too large to be a length or an index.
    Overflow,
    /// A Huffman string with bad padding or EOS.
    Huffman,
    /// A table size update past the limit, or after the first field.
    BadSizeUpdate,
    /// The block decodes to more than [`MAX_DECODED`] octets.
    TooLong,
}

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            HpackError::Truncated => "the block ends inside a field",
            HpackError::BadIndex => "an index past the table",
            HpackError::Overflow => "an integer too large",
            HpackError::Huffman => "a bad Huffman string",
            HpackError::BadSizeUpdate => "a bad table size update",
            HpackError::TooLong => "the block decodes too long",
        };
        f.write_str(what)
    }
}

/// One decoded field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    Known {
        name: &'a [u8],
        value: &'a [u8],
    },
    /// A reference to a dynamic-table entry this decoder does not know
    /// (see the module docs): its name and value are unknown.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Known {
        name: (u32, u32),
        value: (u32, u32),
    },
    Unknown,
    /// A literal whose name is an entry this decoder does not know: its
    /// value's length still counts in the table's size if it is inserted.
    UnknownName {
        value_len: u32,
    },
}

/// The fields of one header block, reused from block to block.
#[derive(Default, Debug)]
pub struct Fields {
    buf: Vec<u8>,
    slots: Vec<Slot>,
    /// More than [`MAX_FIELDS`] fields: the rest were not kept.
    pub truncated: bool,
}

impl Fields {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.slots.clear();
        self.truncated = false;
    }

    pub fn iter(&self) -> impl Iterator<Item = Field<'_>> {
        self.slots.iter().map(|s| match *s {
            Slot::Known { name, value } => Field::Known {
                name: &self.buf[name.0 as usize..name.1 as usize],
                value: &self.buf[value.0 as usize..value.1 as usize],
            },
            Slot::Unknown | Slot::UnknownName { .. } => Field::Unknown,
        })
    }

    /// The value of the first field named `name`, if it is known.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find_map(|f| match f {
            Field::Known { name: n, value } if n == name.as_bytes() => Some(value),
            _ => None,
        })
    }

    /// Whether some field of the block is unknown.
    pub fn has_unknown(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Unknown | Slot::UnknownName { .. }))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn push(&mut self, slot: Slot) {
        if self.slots.len() < MAX_FIELDS {
            self.slots.push(slot);
        } else {
            self.truncated = true;
        }
    }
}

/// A field's name and value, borrowed from a table.
type NameValue<'a> = (&'a [u8], &'a [u8]);

/// A dynamic-table entry: its name then its value in one allocation, or
/// an entry inserted with a name this decoder did not know.
#[derive(Debug)]
enum Entry {
    Known { bytes: Box<[u8]>, name_len: usize },
    Unknown { size: usize },
}

impl Entry {
    /// RFC 7541 §4.1: name and value lengths plus 32.
    fn size(&self) -> usize {
        match self {
            Entry::Known { bytes, .. } => bytes.len() + 32,
            Entry::Unknown { size } => *size,
        }
    }
}

#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    /// The table's maximum size, as the encoder last set it.
    max: usize,
    /// What the peer's SETTINGS_HEADER_TABLE_SIZE lets the encoder set.
    limit: usize,
    /// Whether `table` is the whole table, not just its front.
    certain: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that sees its connection from the start.
    pub fn new() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: DEFAULT_TABLE_SIZE,
            limit: DEFAULT_TABLE_SIZE,
            certain: true,
        }
    }

    /// A decoder that joins a connection mid-stream: the table is unknown.
    pub fn joined() -> Self {
        Decoder {
            certain: false,
            max: MAX_TABLE_SIZE,
            limit: MAX_TABLE_SIZE,
            ..Self::new()
        }
    }

    /// Whether the whole dynamic table is known.
    pub fn is_certain(&self) -> bool {
        self.certain
    }

    /// A header block went unseen: what it inserted is unknown, so nothing
    /// older can be placed any more.
    pub fn lost(&mut self) {
        self.table.clear();
        self.size = 0;
        self.certain = false;
        self.max = MAX_TABLE_SIZE;
        self.limit = MAX_TABLE_SIZE;
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE: how large the encoder may
    /// set its table from now on. Only ever raised here: the encoder may
    /// not have seen a lower one yet, and this is a bound, not a size.
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = self.limit.max(limit as usize);
    }

    /// Decodes one whole header block into `out` (cleared first). On an
    /// error the table is unknown from here ([`Decoder::lost`]), and `out`
    /// holds the fields decoded before it.
    pub fn decode(&mut self, block: &[u8], out: &mut Fields) -> Result<(), HpackError> {
        out.clear();
        let r = self.decode_fields(block, out);
        if r.is_err() {
            self.lost();
        }
        r
    }

    fn decode_fields(&mut self, block: &[u8], out: &mut Fields) -> Result<(), HpackError> {
        let mut at = 0;
        let mut first = true;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                let index = integer(block, &mut at, 7)?;
                let slot = self.indexed(index, out)?;
                out.push(slot);
            } else if b & 0xc0 == 0x40 {
                let index = integer(block, &mut at, 6)?;
                let slot = self.literal(block, &mut at, index, out)?;
                self.insert(slot, out);
                out.push(slot);
            } else if b & 0xe0 == 0x20 {
                let size = integer(block, &mut at, 5)?;
                if !first {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.size_update(size)?;
                continue;
            } else {
                let index = integer(block, &mut at, 4)?;
                let slot = self.literal(block, &mut at, index, out)?;
                out.push(slot);
            }
            first = false;
        }
        Ok(())
    }

    /// The field at `index`, copied into `out`'s buffer.
    fn indexed(&self, index: usize, out: &mut Fields) -> Result<Slot, HpackError> {
        match self.lookup(index)? {
            Some((name, value)) => {
                let name = copy(out, name)?;
                let value = copy(out, value)?;
                Ok(Slot::Known { name, value })
            }
            None => Ok(Slot::Unknown),
        }
    }

    /// The name and value at `index`: `None` when it is a dynamic entry
    /// this decoder does not know.
    fn lookup(&self, index: usize) -> Result<Option<NameValue<'_>>, HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok(Some((n.as_bytes(), v.as_bytes())))
            }
            _ => match self.table.get(index - 62) {
                Some(Entry::Known { bytes, name_len }) => {
                    Ok(Some((&bytes[..*name_len], &bytes[*name_len..])))
                }
                Some(Entry::Unknown { .. }) => Ok(None),
                None if self.certain => Err(HpackError::BadIndex),
                None => Ok(None),
            },
        }
    }

    /// A literal field whose name is at `index`, or (0) follows as a string.
    fn literal(
        &self,
        block: &[u8],
        at: &mut usize,
        index: usize,
        out: &mut Fields,
    ) -> Result<Slot, HpackError> {
        let name = if index == 0 {
            Some(string(block, at, out)?)
        } else {
            match self.lookup(index)? {
                Some((name, _)) => Some(copy(out, name)?),
                None => None,
            }
        };
        let value = string(block, at, out)?;
        Ok(match name {
            Some(name) => Slot::Known { name, value },
            None => Slot::UnknownName {
                value_len: value.1 - value.0,
            },
        })
    }

    fn insert(&mut self, slot: Slot, out: &Fields) {
        let entry = match slot {
            Slot::Known { name, value } => {
                let mut bytes = Vec::with_capacity((name.1 - name.0 + value.1 - value.0) as usize);
                bytes.extend_from_slice(&out.buf[name.0 as usize..name.1 as usize]);
                bytes.extend_from_slice(&out.buf[value.0 as usize..value.1 as usize]);
                Entry::Known {
                    name_len: (name.1 - name.0) as usize,
                    bytes: bytes.into_boxed_slice(),
                }
            }
            // Its name's length is unknown: counted as empty, so the
            // entry may be kept longer than the real table keeps it,
            // which is safe (see `insert`'s bound below).
            Slot::UnknownName { value_len } => Entry::Unknown {
                size: value_len as usize + 32,
            },
            Slot::Unknown => Entry::Unknown { size: 32 },
        };
        let size = entry.size();
        // An uncertain decoder keeps up to its bound: entries past the
        // real table's end are never referenced, so keeping them is safe.
        let max = if self.certain {
            self.max
        } else {
            MAX_TABLE_SIZE
        };
        if size > max {
            // RFC 7541 §4.4: the table empties, and the entry is not added.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.size += size;
        self.table.push_front(entry);
        self.evict(max);
    }

    fn evict(&mut self, max: usize) {
        while self.size > max {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    fn size_update(&mut self, size: usize) -> Result<(), HpackError> {
        if size > self.limit {
            return Err(HpackError::BadSizeUpdate);
        }
        if size == 0 {
            // Nothing is left: the table is known again, empty.
            self.table.clear();
            self.size = 0;
            self.certain = true;
        }
        if size > MAX_TABLE_SIZE {
            // Larger than this decoder keeps: its oldest entries will be
            // unknown.
            self.certain = false;
        }
        self.max = size.min(MAX_TABLE_SIZE);
        if self.certain {
            self.evict(self.max);
        }
        Ok(())
    }
}

/// Copies `bytes` into `out`'s buffer, bounded by [`MAX_DECODED`].
fn copy(out: &mut Fields, bytes: &[u8]) -> Result<(u32, u32), HpackError> {
    let start = out.buf.len();
    if start + bytes.len() > MAX_DECODED {
        return Err(HpackError::TooLong);
    }
    out.buf.extend_from_slice(bytes);
    Ok((start as u32, out.buf.len() as u32))
}

/// A string literal (RFC 7541 §5.2) at `at`, decoded into `out`'s buffer.
fn string(block: &[u8], at: &mut usize, out: &mut Fields) -> Result<(u32, u32), HpackError> {
    let huffman = *block.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let raw = block.get(*at..*at + len).ok_or(HpackError::Truncated)?;
    *at += len;
    if !huffman {
        return copy(out, raw);
    }
    let start = out.buf.len();
    huffman::decode(raw, &mut out.buf, MAX_DECODED - start).map_err(|e| match e {
        huffman::HuffmanError::TooLong => HpackError::TooLong,
        huffman::HuffmanError::BadPadding => HpackError::Huffman,
    })?;
    Ok((start as u32, out.buf.len() as u32))
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1) at `at`.
fn integer(block: &[u8], at: &mut usize, n: u8) -> Result<usize, HpackError> {
    let mask = (1u8 << n) - 1;
    let first = *block.get(*at).ok_or(HpackError::Truncated)? & mask;
    *at += 1;
    if first < mask {
        return Ok(first as usize);
    }
    let mut value = mask as usize;
    let mut shift = 0;
    loop {
        let b = *block.get(*at).ok_or(HpackError::Truncated)?;
        *at += 1;
        // 2^28 is far past any length or index a bounded block can hold.
        if shift > 21 {
            return Err(HpackError::Overflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::hex;

    fn fields(f: &Fields) -> Vec<(String, String)> {
        f.iter()
            .map(|f| match f {
                Field::Known { name, value } => (
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ),
                Field::Unknown => ("?".to_owned(), "?".to_owned()),
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.table
            .iter()
            .map(|e| match e {
                Entry::Known { bytes, name_len } => (
                    String::from_utf8_lossy(&bytes[..*name_len]).into_owned(),
                    String::from_utf8_lossy(&bytes[*name_len..]).into_owned(),
                ),
                Entry::Unknown { .. } => ("?".to_owned(), "?".to_owned()),
            })
            .collect()
    }

    const DATE_1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE_2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    const WWW: &str = "https://www.example.com";

    fn requests() -> Vec<Vec<(String, String)>> {
        let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        vec![
            pairs(&[base[0], base[1], base[2], (":authority", "www.example.com")]),
            pairs(&[
                base[0],
                base[1],
                base[2],
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ]
    }

    fn responses() -> Vec<Vec<(String, String)>> {
        vec![
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", DATE_1),
                ("location", WWW),
            ]),
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", DATE_1),
                ("location", WWW),
            ]),
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", DATE_2),
                ("location", WWW),
                ("content-encoding", "gzip"),
                ("set-cookie", COOKIE),
            ]),
        ]
    }

    fn run(d: &mut Decoder, blocks: &[&str], want: &[Vec<(String, String)>], sizes: [usize; 3]) {
        let mut out = Fields::default();
        for (i, block) in blocks.iter().enumerate() {
            d.decode(&hex(block), &mut out).unwrap();
            assert_eq!(fields(&out), want[i], "block {i}");
            assert_eq!(d.size, sizes[i], "table size after block {i}");
        }
    }

    #[test]
    fn rfc_7541_c2_literals() {
        let mut d = Decoder::new();
        let mut out = Fields::default();
        // C.2.1: with indexing.
        d.decode(
            &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
            &mut out,
        )
        .unwrap();
        assert_eq!(fields(&out), pairs(&[("custom-key", "custom-header")]));
        assert_eq!(d.size, 55);
        // C.2.2: without indexing; C.2.3: never indexed; C.2.4: indexed.
        let mut d = Decoder::new();
        d.decode(&hex("040c 2f73 616d 706c 652f 7061 7468"), &mut out)
            .unwrap();
        assert_eq!(fields(&out), pairs(&[(":path", "/sample/path")]));
        d.decode(&hex("1008 7061 7373 776f 7264 0673 6563 7265 74"), &mut out)
            .unwrap();
        assert_eq!(fields(&out), pairs(&[("password", "secret")]));
        d.decode(&hex("82"), &mut out).unwrap();
        assert_eq!(fields(&out), pairs(&[(":method", "GET")]));
        assert_eq!(d.size, 0);
    }

    #[test]
    fn rfc_7541_c3_requests_without_huffman() {
        let mut d = Decoder::new();
        run(
            &mut d,
            &[
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            &requests(),
            [57, 110, 164],
        );
        assert_eq!(
            table(&d),
            pairs(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ])
        );
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        let mut d = Decoder::new();
        run(
            &mut d,
            &[
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
            &requests(),
            [57, 110, 164],
        );
    }

    fn with_max(max: usize) -> Decoder {
        Decoder {
            max,
            ..Decoder::new()
        }
    }

    #[test]
    fn rfc_7541_c5_responses_without_huffman() {
        let mut d = with_max(256);
        run(
            &mut d,
            &[
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 \
                 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 \
                 7861 6d70 6c65 2e63 6f6d",
                "4803 3330 37c1 c0bf",
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 \
                 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 \
                 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 \
                 6572 7369 6f6e 3d31",
            ],
            &responses(),
            [222, 222, 215],
        );
        assert_eq!(
            table(&d),
            pairs(&[
                ("set-cookie", COOKIE),
                ("content-encoding", "gzip"),
                ("date", DATE_2),
            ])
        );
    }

    #[test]
    fn rfc_7541_c6_responses_with_huffman() {
        let mut d = with_max(256);
        run(
            &mut d,
            &[
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 \
                 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                "4883 640e ffc1 c0bf",
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b \
                 d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 \
                 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ],
            &responses(),
            [222, 222, 215],
        );
    }

    #[test]
    fn a_joined_decoder_never_guesses_a_dynamic_entry() {
        // C.3's second request, seen without the first: `be` (62) refers
        // to an entry inserted before the decoder joined.
        let mut d = Decoder::joined();
        let mut out = Fields::default();
        d.decode(&hex("8286 84be 5808 6e6f 2d63 6163 6865"), &mut out)
            .unwrap();
        assert_eq!(
            fields(&out),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("?", "?"),
                ("cache-control", "no-cache"),
            ])
        );
        // The third: `bf` (63) is still unknown, but `be` (62) is now the
        // entry inserted above, which the decoder saw.
        d.decode(
            &hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65 be"),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.get(":path"), Some(&b"/index.html"[..]));
        let f = fields(&out);
        assert_eq!(f[3], ("?".to_owned(), "?".to_owned()));
        assert_eq!(f[4], ("custom-key".to_owned(), "custom-value".to_owned()));
        // After the insertion above, 62 is custom-key and 63 cache-control.
        assert_eq!(f[5], ("custom-key".to_owned(), "custom-value".to_owned()));
        assert!(!d.is_certain());
        // A literal with indexing whose name is unknown inserts an entry
        // that is unknown too, and shifts the known ones.
        d.decode(&hex("7f07 0178"), &mut out).unwrap();
        assert!(out.has_unknown());
        d.decode(&hex("be bf"), &mut out).unwrap();
        assert_eq!(fields(&out)[0], ("?".to_owned(), "?".to_owned()));
        assert_eq!(
            fields(&out)[1],
            ("custom-key".to_owned(), "custom-value".to_owned())
        );
    }

    #[test]
    fn a_size_update_to_zero_makes_the_table_known() {
        let mut d = Decoder::joined();
        let mut out = Fields::default();
        d.decode(&hex("20 be"), &mut out).unwrap_err();
        let mut d = Decoder::joined();
        d.decode(&hex("20 82"), &mut out).unwrap();
        assert!(d.is_certain());
    }

    #[test]
    fn errors_leave_the_table_unknown() {
        let mut out = Fields::default();
        for bad in [
            "80",
            "be",
            "41",
            "4105 6162",
            "82 20",
            "ff ffff ffff ff",
            "4181 00",
        ] {
            let mut d = Decoder::new();
            assert!(d.decode(&hex(bad), &mut out).is_err(), "{bad}");
            assert!(!d.is_certain(), "{bad}");
        }
        // A size update past the limit the peer's SETTINGS allow.
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(&hex("3fe2 1f"), &mut out),
            Err(HpackError::BadSizeUpdate)
        );
        let mut d = Decoder::new();
        d.set_limit(8192);
        d.decode(&hex("3fe2 1f 82"), &mut out).unwrap();
        assert_eq!(d.max, 4097);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut d = Decoder::new();
        let mut out = Fields::default();
        // 200 insertions of a 40-byte field (8 + 0 + 32 each... plus value).
        for i in 0..200u32 {
            let mut block = vec![0x40, 0x04];
            block.extend_from_slice(b"name");
            block.push(0x04);
            block.extend_from_slice(&i.to_be_bytes());
            d.decode(&block, &mut out).unwrap();
            assert!(d.size <= DEFAULT_TABLE_SIZE);
        }
        assert_eq!(d.table.len(), DEFAULT_TABLE_SIZE / 40);
    }
}
