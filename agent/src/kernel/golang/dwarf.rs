//! What a Go binary's own DWARF says, when it keeps it (`go build` does,
//! unless told `-ldflags=-w`): where its standard library keeps the
//! fields the probes follow from a `*tls.Conn` to its socket, and whether
//! `runtime.newproc1` takes the arguments the goroutine probes read. It is
//! that binary's truth, whatever its release, so a release the offsets
//! table lacks is still hooked when its DWARF answers.
//!
//! Every field is checked by its type's name as well as its own, as
//! `tests/fixtures/go/offsets.go` checks them through `reflect`: a
//! renamed or retyped field gives no answer, never a wrong one.

use std::{borrow::Cow, io::Read as _};

use object::{Object as _, ObjectSection as _};

use super::Fields;

/// The most a DWARF section may take once decompressed: a big Go binary's
/// `.debug_info` is some tens of MiB; a larger one is not read (and the
/// offsets table answers, if it can).
const MAX_SECTION: u64 = 256 << 20;

/// What the probes need from a binary's DWARF.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// The fields' offsets, if every one was found with its type.
    pub fields: Option<Fields>,
    /// `runtime.newproc1`'s first two parameters are `fn` and
    /// `callergp`: the goroutine probes read the caller's `g` from the
    /// second argument register.
    pub newproc1_checked: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("its DWARF does not parse: {0}")]
    Parse(#[from] gimli::Error),
    #[error("its DWARF section {0} does not decompress")]
    Decompress(&'static str),
    #[error("its DWARF section {0} is over {max} MiB decompressed", max = MAX_SECTION >> 20)]
    TooBig(&'static str),
}

type Reader<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

/// The member offsets the probes need, by struct, member and the
/// member's type: `(struct, member, type)`.
const MEMBERS: [(&str, &str, &str); 5] = [
    ("crypto/tls.Conn", "conn", "net.Conn"),
    ("net.TCPConn", "conn", "net.conn"),
    ("net.conn", "fd", "*net.netFD"),
    ("net.netFD", "pfd", "internal/poll.FD"),
    ("internal/poll.FD", "Sysfd", "int"),
];

/// Reads `obj`'s DWARF: `Ok(None)` if it has none.
pub fn read(obj: &object::File<'_>) -> Result<Option<Answers>, Error> {
    if obj.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    // Only what naming types and members takes: the rest stays
    // compressed in the file.
    let info = section(obj, ".debug_info")?;
    let abbrev = section(obj, ".debug_abbrev")?;
    let strings = section(obj, ".debug_str")?;
    Ok(Some(from_sections(&info, &abbrev, &strings)?))
}

/// What three decompressed sections say.
pub fn from_sections(info: &[u8], abbrev: &[u8], strings: &[u8]) -> Result<Answers, Error> {
    Dwarf {
        info: gimli::DebugInfo::new(info, gimli::LittleEndian),
        abbrev: gimli::DebugAbbrev::new(abbrev, gimli::LittleEndian),
        strings: gimli::DebugStr::new(strings, gimli::LittleEndian),
    }
    .answers()
}

/// A section's bytes, decompressed (Go compresses its DWARF with zlib).
fn section<'d>(obj: &object::File<'d>, name: &'static str) -> Result<Cow<'d, [u8]>, Error> {
    let Some(s) = obj.section_by_name(name) else {
        return Ok(Cow::Borrowed(&[][..]));
    };
    let packed = s.compressed_data().map_err(|_| Error::Decompress(name))?;
    match packed.format {
        object::CompressionFormat::None => Ok(Cow::Borrowed(packed.data)),
        object::CompressionFormat::Zlib => {
            if packed.uncompressed_size > MAX_SECTION {
                return Err(Error::TooBig(name));
            }
            let mut out = Vec::with_capacity(packed.uncompressed_size as usize);
            flate2::read::ZlibDecoder::new(packed.data)
                .take(packed.uncompressed_size)
                .read_to_end(&mut out)
                .map_err(|_| Error::Decompress(name))?;
            if out.len() as u64 != packed.uncompressed_size {
                return Err(Error::Decompress(name));
            }
            Ok(Cow::Owned(out))
        }
        _ => Err(Error::Decompress(name)),
    }
}

/// The three sections read.
struct Dwarf<'a> {
    info: gimli::DebugInfo<Reader<'a>>,
    abbrev: gimli::DebugAbbrev<Reader<'a>>,
    strings: gimli::DebugStr<Reader<'a>>,
}

/// A member found: its offset, and where its type's entry is.
#[derive(Clone, Copy)]
struct Member {
    offset: u64,
    ty: gimli::DebugInfoOffset,
}

/// Whose children a walk is in: a struct of [`MEMBERS`] (by its index:
/// each has one member there), or `runtime.newproc1`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Within {
    Struct(usize),
    Newproc1,
}

impl Dwarf<'_> {
    fn name(&self, e: &gimli::DebuggingInformationEntry<Reader<'_>>) -> Option<String> {
        let s = match e.attr_value(gimli::DW_AT_name)? {
            gimli::AttributeValue::String(s) => s,
            gimli::AttributeValue::DebugStrRef(o) => self.strings.get_str(o).ok()?,
            _ => return None,
        };
        Some(String::from_utf8_lossy(s.slice()).into_owned())
    }

    fn answers(&self) -> Result<Answers, Error> {
        let mut members: [Option<Member>; MEMBERS.len()] = [None; MEMBERS.len()];
        let mut newproc1: Option<Vec<String>> = None;
        let mut units = self.info.units();
        while let Some(header) = units.next()? {
            let abbrevs = header.abbreviations(&self.abbrev)?;
            let mut entries = header.entries(&abbrevs);
            let mut inside: Option<(Within, isize)> = None;
            while let Some(e) = entries.next_dfs()? {
                if inside.is_some_and(|(_, d)| e.depth <= d) {
                    inside = None;
                }
                match (e.tag, inside) {
                    (gimli::DW_TAG_structure_type, _) => {
                        let n = self.name(e);
                        if let Some(i) = MEMBERS.iter().position(|(s, ..)| Some(*s) == n.as_deref())
                        {
                            inside = Some((Within::Struct(i), e.depth));
                        }
                    }
                    (gimli::DW_TAG_subprogram, _)
                        if newproc1.is_none()
                            && self.name(e).as_deref() == Some(super::NEWPROC1) =>
                    {
                        newproc1 = Some(Vec::new());
                        inside = Some((Within::Newproc1, e.depth));
                    }
                    (gimli::DW_TAG_member, Some((Within::Struct(i), d))) if e.depth == d + 1 => {
                        if self.name(e).as_deref() != Some(MEMBERS[i].1) {
                            continue;
                        }
                        let offset = e
                            .attr_value(gimli::DW_AT_data_member_location)
                            .and_then(|v| v.udata_value());
                        let ty = match e.attr_value(gimli::DW_AT_type) {
                            Some(gimli::AttributeValue::UnitRef(o)) => {
                                o.to_debug_info_offset(&header)
                            }
                            Some(gimli::AttributeValue::DebugInfoRef(o)) => Some(o),
                            _ => None,
                        };
                        if let (Some(offset), Some(ty)) = (offset, ty) {
                            members[i].get_or_insert(Member { offset, ty });
                        }
                    }
                    (gimli::DW_TAG_formal_parameter, Some((Within::Newproc1, d)))
                        if e.depth == d + 1 =>
                    {
                        let name = self.name(e).unwrap_or_default();
                        newproc1.get_or_insert_with(Vec::new).push(name);
                    }
                    _ => {}
                }
            }
        }
        let newproc1_checked =
            newproc1.is_some_and(|p| p.len() >= 2 && p[0] == "fn" && p[1] == "callergp");
        let mut at = [0u64; MEMBERS.len()];
        for (i, m) in members.iter().enumerate() {
            // A member missing, or of another type: no answer.
            let typed = match m {
                Some(m) => self.type_name(m.ty)?.as_deref() == Some(MEMBERS[i].2),
                None => false,
            };
            if !typed {
                return Ok(Answers {
                    fields: None,
                    newproc1_checked,
                });
            }
            at[i] = m.map_or(0, |m| m.offset);
        }
        let fields = (|| {
            Some(Fields {
                conn: u16::try_from(at[0]).ok()?,
                netfd: u16::try_from(at[1].checked_add(at[2])?).ok()?,
                sysfd: u16::try_from(at[3].checked_add(at[4])?).ok()?,
            })
        })();
        Ok(Answers {
            fields,
            newproc1_checked,
        })
    }

    /// The name of the entry at `at`, in whichever unit holds it (Go
    /// keeps its types in a unit of their own).
    fn type_name(&self, at: gimli::DebugInfoOffset) -> Result<Option<String>, Error> {
        let mut units = self.info.units();
        while let Some(header) = units.next()? {
            let Some(offset) = at.to_unit_offset(&header) else {
                continue;
            };
            let abbrevs = header.abbreviations(&self.abbrev)?;
            let entry = header.entry(&abbrevs, offset)?;
            return Ok(self.name(&entry));
        }
        Ok(None)
    }
}
