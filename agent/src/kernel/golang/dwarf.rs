//! What a Go binary's own DWARF says, when it keeps it (`go build` does,
//! unless told `-w`, or `-s` from Go 1.22 on): where its standard library
//! keeps the fields the probes follow from a `*tls.Conn` to its socket, and
//! whether the functions the probes read arguments of take them where the
//! probes look. It is that binary's truth, whatever its release, so a
//! release the offsets table lacks is still hooked when its DWARF answers.
//!
//! Every field is checked by its type's name as well as its own, as
//! `tests/fixtures/go/offsets.go` checks them through `reflect`, and every
//! function by its parameters' names and types: a renamed or retyped one
//! gives no answer, never a wrong one.

use std::{borrow::Cow, collections::BTreeMap, io::Read as _, rc::Rc};

use object::{Object as _, ObjectSection as _};

use super::Fields;

/// The most the three sections read may take once decompressed, together:
/// a large Go binary's are some MiB to tens of MiB (the 43 MB `docker`
/// CLI's, 12 MiB), and the deployed agent's memory limit is 256 MiB. A
/// binary over it is read by the offsets table, if that can.
const BUDGET: u64 = 64 << 20;

/// What the probes need from a binary's DWARF.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// The fields' offsets, if every one was found with its type.
    pub fields: Option<Fields>,
    /// `crypto/tls`'s `Read` and `Write`, `runtime.newproc1`, and
    /// `net/http`'s `roundTrip` and `writeLoop`, against [`SIGNATURES`].
    pub tls: Check,
    pub newproc1: Check,
    pub handoff: Check,
}

/// What DWARF says of functions whose arguments the probes read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Check {
    /// Found, taking and giving what the probes read, where they read it.
    Holds,
    /// Found, and not so.
    Differs,
    /// Not all found.
    #[default]
    NotFound,
}

impl Check {
    /// Whether the probes may read the functions: what DWARF says, and,
    /// where it says nothing, whether the release is one the probes were
    /// built and tested for (`known`).
    pub fn trusted(self, known: bool) -> bool {
        match self {
            Check::Holds => true,
            Check::Differs => false,
            Check::NotFound => known,
        }
    }

    /// Both of two functions.
    fn and(self, other: Check) -> Check {
        match (self, other) {
            (Check::Differs, _) | (_, Check::Differs) => Check::Differs,
            (Check::Holds, Check::Holds) => Check::Holds,
            _ => Check::NotFound,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("its DWARF does not parse: {0}")]
    Parse(#[from] gimli::Error),
    #[error("its DWARF section {0} does not decompress")]
    Decompress(&'static str),
    #[error("its DWARF is over {max} MiB decompressed", max = BUDGET >> 20)]
    TooBig,
}

type Reader<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

/// The member offsets the probes need, by struct, member and the
/// member's type: `(struct, member, type)`. Each struct has one here.
const MEMBERS: [(&str, &str, &str); 5] = [
    ("crypto/tls.Conn", "conn", "net.Conn"),
    ("net.TCPConn", "conn", "net.conn"),
    ("net.conn", "fd", "*net.netFD"),
    ("net.netFD", "pfd", "internal/poll.FD"),
    ("internal/poll.FD", "Sysfd", "int"),
];

/// A function the probes read arguments or results of, as Go's register
/// ABI places them (integer arguments in RAX, RBX, RCX, … in order, each
/// word its own register; results likewise from RAX): its first
/// parameters' names and types, and all its results' types, if checked.
struct Signature {
    function: &'static str,
    inputs: &'static [(&'static str, &'static str)],
    outputs: Option<&'static [&'static str]>,
}

const SIGNATURES: [Signature; 5] = [
    // The TLS probes: `c` in RAX, `b` in RBX/RCX; `n` in RAX at return.
    Signature {
        function: super::READ,
        inputs: &[("c", "*crypto/tls.Conn"), ("b", "[]uint8")],
        outputs: Some(&["int", "error"]),
    },
    Signature {
        function: super::WRITE,
        inputs: &[("c", "*crypto/tls.Conn"), ("b", "[]uint8")],
        outputs: Some(&["int", "error"]),
    },
    // The caller's `g` in RBX (after the one-word `fn`); the new `g` in
    // RAX at return.
    Signature {
        function: super::NEWPROC1,
        inputs: &[("fn", "*runtime.funcval"), ("callergp", "*runtime.g")],
        outputs: Some(&["*runtime.g"]),
    },
    // The connection in RAX.
    Signature {
        function: super::ROUND_TRIP,
        inputs: &[("pc", "*net/http.persistConn")],
        outputs: None,
    },
    Signature {
        function: super::WRITE_LOOP,
        inputs: &[("pc", "*net/http.persistConn")],
        outputs: None,
    },
];

/// Reads `obj`'s DWARF: `Ok(None)` if it has none.
pub fn read(obj: &object::File<'_>) -> Result<Option<Answers>, Error> {
    if obj.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    // Only what naming types, members and parameters takes: the rest
    // stays compressed in the file.
    let mut budget = BUDGET;
    let info = section(obj, ".debug_info", &mut budget)?;
    let abbrev = section(obj, ".debug_abbrev", &mut budget)?;
    let strings = section(obj, ".debug_str", &mut budget)?;
    Ok(Some(from_sections(&info, &abbrev, &strings)?))
}

/// What three decompressed sections say.
pub fn from_sections(info: &[u8], abbrev: &[u8], strings: &[u8]) -> Result<Answers, Error> {
    Dwarf {
        info: gimli::DebugInfo::new(info, gimli::LittleEndian),
        abbrev: gimli::DebugAbbrev::new(abbrev, gimli::LittleEndian),
        strings: gimli::DebugStr::new(strings, gimli::LittleEndian),
        abbrevs: Default::default(),
    }
    .answers()
}

/// A section's bytes, decompressed (Go compresses its DWARF with zlib),
/// taken from what is left of `budget`.
fn section<'d>(
    obj: &object::File<'d>,
    name: &'static str,
    budget: &mut u64,
) -> Result<Cow<'d, [u8]>, Error> {
    let Some(s) = obj.section_by_name(name) else {
        return Ok(Cow::Borrowed(&[][..]));
    };
    let packed = s.compressed_data().map_err(|_| Error::Decompress(name))?;
    match packed.format {
        object::CompressionFormat::None => Ok(Cow::Borrowed(packed.data)),
        object::CompressionFormat::Zlib => {
            *budget = budget
                .checked_sub(packed.uncompressed_size)
                .ok_or(Error::TooBig)?;
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

/// The three sections read, and each unit's abbreviations, parsed once
/// (units share them; a hostile file could make them huge and many).
struct Dwarf<'a> {
    info: gimli::DebugInfo<Reader<'a>>,
    abbrev: gimli::DebugAbbrev<Reader<'a>>,
    strings: gimli::DebugStr<Reader<'a>>,
    abbrevs: BTreeMap<usize, Rc<gimli::Abbreviations>>,
}

/// A member found: its offset, and where its type's entry is.
#[derive(Clone, Copy)]
struct Member {
    offset: u64,
    ty: gimli::DebugInfoOffset,
}

/// A function's parameter: its name, whether it is a result, and where
/// its type's entry is.
struct Param {
    name: String,
    output: bool,
    ty: Option<gimli::DebugInfoOffset>,
}

/// Whose children a walk is in: a struct of [`MEMBERS`] or a function of
/// [`SIGNATURES`], by index.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Within {
    Struct(usize),
    Function(usize),
}

type Entry<'a> = gimli::DebuggingInformationEntry<Reader<'a>>;

impl<'a> Dwarf<'a> {
    fn name(&self, e: &Entry<'a>) -> Option<&'a [u8]> {
        match e.attr_value(gimli::DW_AT_name)? {
            gimli::AttributeValue::String(s) => Some(s.slice()),
            gimli::AttributeValue::DebugStrRef(o) => {
                self.strings.get_str(o).ok().map(|s| s.slice())
            }
            _ => None,
        }
    }

    fn abbreviations(
        &mut self,
        header: &gimli::UnitHeader<Reader<'a>>,
    ) -> Result<Rc<gimli::Abbreviations>, Error> {
        let at = header.debug_abbrev_offset();
        if let Some(a) = self.abbrevs.get(&at.0) {
            return Ok(a.clone());
        }
        let a = Rc::new(self.abbrev.abbreviations(at)?);
        self.abbrevs.insert(at.0, a.clone());
        Ok(a)
    }

    fn answers(&mut self) -> Result<Answers, Error> {
        let mut members: [Option<Member>; MEMBERS.len()] = [None; MEMBERS.len()];
        // Each function's parameters, once its entry's children are over.
        let mut params: [Option<Vec<Param>>; SIGNATURES.len()] = Default::default();
        let mut units = self.info.units();
        'units: while let Some(header) = units.next()? {
            let abbrevs = self.abbreviations(&header)?;
            let mut entries = header.entries(&abbrevs);
            let mut inside: Option<(Within, isize)> = None;
            let mut reading: Vec<Param> = Vec::new();
            while let Some(e) = entries.next_dfs()? {
                if let Some((within, _)) = inside.filter(|&(_, d)| e.depth <= d) {
                    if let Within::Function(j) = within {
                        params[j] = Some(std::mem::take(&mut reading));
                    }
                    inside = None;
                    // All found: the rest of a large binary's DWARF is
                    // not walked.
                    if members.iter().all(Option::is_some) && params.iter().all(Option::is_some) {
                        break 'units;
                    }
                }
                let child = inside.filter(|&(_, d)| e.depth == d + 1).map(|(w, _)| w);
                match (e.tag, child) {
                    (gimli::DW_TAG_structure_type, _) if inside.is_none() => {
                        let n = self.name(e);
                        if let Some(i) = MEMBERS
                            .iter()
                            .position(|(s, ..)| Some(s.as_bytes()) == n)
                            .filter(|&i| members[i].is_none())
                        {
                            inside = Some((Within::Struct(i), e.depth));
                        }
                    }
                    (gimli::DW_TAG_subprogram, _) if inside.is_none() => {
                        let n = self.name(e);
                        if let Some(j) = SIGNATURES
                            .iter()
                            .position(|s| Some(s.function.as_bytes()) == n)
                            .filter(|&j| params[j].is_none())
                        {
                            inside = Some((Within::Function(j), e.depth));
                            reading.clear();
                        }
                    }
                    (gimli::DW_TAG_member, Some(Within::Struct(i))) => {
                        if self.name(e) != Some(MEMBERS[i].1.as_bytes()) {
                            continue;
                        }
                        let offset = e
                            .attr_value(gimli::DW_AT_data_member_location)
                            .and_then(|v| v.udata_value());
                        if let (Some(offset), Some(ty)) = (offset, type_of(e, &header)) {
                            members[i] = Some(Member { offset, ty });
                        }
                    }
                    (gimli::DW_TAG_formal_parameter, Some(Within::Function(_))) => {
                        reading.push(Param {
                            name: String::from_utf8_lossy(self.name(e).unwrap_or_default())
                                .into_owned(),
                            output: matches!(
                                e.attr_value(gimli::DW_AT_variable_parameter),
                                Some(gimli::AttributeValue::Flag(true))
                            ),
                            ty: type_of(e, &header),
                        });
                    }
                    _ => {}
                }
            }
            // A function whose entry is the unit's last.
            if let Some((Within::Function(j), _)) = inside {
                params[j] = Some(reading);
            }
        }
        let mut checks = [Check::NotFound; SIGNATURES.len()];
        for (j, sig) in SIGNATURES.iter().enumerate() {
            if let Some(p) = &params[j] {
                checks[j] = if self.signature_holds(sig, p)? {
                    Check::Holds
                } else {
                    Check::Differs
                };
            }
        }
        Ok(Answers {
            fields: self.fields(&members)?,
            tls: checks[0].and(checks[1]),
            newproc1: checks[2],
            handoff: checks[3].and(checks[4]),
        })
    }

    /// The offsets, if every member was found with its type.
    fn fields(&mut self, members: &[Option<Member>]) -> Result<Option<Fields>, Error> {
        let mut at = [0u64; MEMBERS.len()];
        for (i, m) in members.iter().enumerate() {
            let Some(m) = m else { return Ok(None) };
            if self.type_name(Some(m.ty))?.as_deref() != Some(MEMBERS[i].2) {
                return Ok(None);
            }
            at[i] = m.offset;
        }
        let sum = |a: u64, b: u64| u16::try_from(a.checked_add(b)?).ok();
        Ok((|| {
            Some(Fields {
                conn: u16::try_from(at[0]).ok()?,
                netfd: sum(at[1], at[2])?,
                sysfd: sum(at[3], at[4])?,
            })
        })())
    }

    fn signature_holds(&mut self, sig: &Signature, params: &[Param]) -> Result<bool, Error> {
        let inputs: Vec<&Param> = params.iter().filter(|p| !p.output).collect();
        if inputs.len() < sig.inputs.len() {
            return Ok(false);
        }
        for (p, (name, ty)) in inputs.iter().zip(sig.inputs) {
            if p.name != *name || self.type_name(p.ty)?.as_deref() != Some(*ty) {
                return Ok(false);
            }
        }
        let Some(want) = sig.outputs else {
            return Ok(true);
        };
        // Some releases list a result twice (Go 1.21's `~r0`): by name.
        let mut outputs: Vec<&Param> = Vec::new();
        for p in params.iter().filter(|p| p.output) {
            if !outputs.iter().any(|o| o.name == p.name) {
                outputs.push(p);
            }
        }
        if outputs.len() != want.len() {
            return Ok(false);
        }
        for (p, ty) in outputs.iter().zip(want) {
            if self.type_name(p.ty)?.as_deref() != Some(*ty) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The name of the entry at `at`, in whichever unit holds it (Go
    /// keeps its types in a unit of their own).
    fn type_name(&mut self, at: Option<gimli::DebugInfoOffset>) -> Result<Option<String>, Error> {
        let Some(at) = at else { return Ok(None) };
        let mut units = self.info.units();
        while let Some(header) = units.next()? {
            let Some(offset) = at.to_unit_offset(&header) else {
                continue;
            };
            let abbrevs = self.abbreviations(&header)?;
            let entry = header.entry(&abbrevs, offset)?;
            return Ok(self
                .name(&entry)
                .map(|n| String::from_utf8_lossy(n).into_owned()));
        }
        Ok(None)
    }
}

/// Where an entry's type is, across units.
fn type_of(
    e: &Entry<'_>,
    header: &gimli::UnitHeader<Reader<'_>>,
) -> Option<gimli::DebugInfoOffset> {
    match e.attr_value(gimli::DW_AT_type)? {
        gimli::AttributeValue::UnitRef(o) => o.to_debug_info_offset(header),
        gimli::AttributeValue::DebugInfoRef(o) => Some(o),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Abbreviation codes of the hand-built DWARF below.
    const UNIT: u8 = 1;
    const STRUCT: u8 = 2;
    const MEMBER: u8 = 3;
    const TYPE: u8 = 4;
    const FUNCTION: u8 = 5;
    const PARAM: u8 = 6;
    // The same two, their types in another unit (`DW_FORM_ref_addr`).
    const MEMBER_FAR: u8 = 7;
    const PARAM_FAR: u8 = 8;

    /// `.debug_abbrev` for the entries [`Unit`] writes.
    fn abbrev() -> Vec<u8> {
        use gimli::constants::*;
        let mut a = Vec::new();
        let mut add = |code: u8, tag: DwTag, children: bool, attrs: &[(DwAt, DwForm)]| {
            a.extend([code, tag.0 as u8, u8::from(children)]);
            for (at, form) in attrs {
                a.extend([at.0 as u8, form.0 as u8]);
            }
            a.extend([0, 0]);
        };
        add(UNIT, DW_TAG_compile_unit, true, &[]);
        add(
            STRUCT,
            DW_TAG_structure_type,
            true,
            &[(DW_AT_name, DW_FORM_string)],
        );
        add(
            MEMBER,
            DW_TAG_member,
            false,
            &[
                (DW_AT_name, DW_FORM_string),
                (DW_AT_data_member_location, DW_FORM_udata),
                (DW_AT_type, DW_FORM_ref4),
            ],
        );
        add(TYPE, DW_TAG_typedef, false, &[(DW_AT_name, DW_FORM_string)]);
        add(
            FUNCTION,
            DW_TAG_subprogram,
            true,
            &[(DW_AT_name, DW_FORM_string)],
        );
        add(
            PARAM,
            DW_TAG_formal_parameter,
            false,
            &[
                (DW_AT_name, DW_FORM_string),
                (DW_AT_variable_parameter, DW_FORM_flag),
                (DW_AT_type, DW_FORM_ref4),
            ],
        );
        add(
            MEMBER_FAR,
            DW_TAG_member,
            false,
            &[
                (DW_AT_name, DW_FORM_string),
                (DW_AT_data_member_location, DW_FORM_udata),
                (DW_AT_type, DW_FORM_ref_addr),
            ],
        );
        add(
            PARAM_FAR,
            DW_TAG_formal_parameter,
            false,
            &[
                (DW_AT_name, DW_FORM_string),
                (DW_AT_variable_parameter, DW_FORM_flag),
                (DW_AT_type, DW_FORM_ref_addr),
            ],
        );
        a.push(0);
        a
    }

    /// One DWARF 4 unit: named types first, then whatever the test adds.
    struct Unit {
        bytes: Vec<u8>,
        types: Vec<(String, u32)>,
        /// Types in an earlier unit, by their offset in `.debug_info`:
        /// members and parameters then refer to them there.
        far: Option<Vec<(String, u32)>>,
    }

    impl Unit {
        fn new(types: &[&str]) -> Unit {
            // unit_length (patched at the end), version, abbrev offset,
            // address size; then the unit's own entry.
            let mut u = Unit {
                bytes: vec![0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 8, UNIT],
                types: Vec::new(),
                far: None,
            };
            for t in types {
                let at = u.bytes.len() as u32;
                u.entry(TYPE, t);
                u.types.push(((*t).to_owned(), at));
            }
            u
        }

        fn entry(&mut self, code: u8, name: &str) {
            self.bytes.push(code);
            self.bytes.extend(name.as_bytes());
            self.bytes.push(0);
        }

        fn ty(&self, name: &str) -> [u8; 4] {
            let types = self.far.as_ref().unwrap_or(&self.types);
            let at = types.iter().find(|(n, _)| n == name).expect("declared").1;
            at.to_le_bytes()
        }

        /// A member's or a parameter's code: its type here, or far.
        fn code(&self, near: u8, far: u8) -> u8 {
            if self.far.is_some() {
                far
            } else {
                near
            }
        }

        fn structure(&mut self, name: &str, members: &[(&str, u8, &str)]) {
            self.entry(STRUCT, name);
            for (member, offset, ty) in members {
                self.entry(self.code(MEMBER, MEMBER_FAR), member);
                self.bytes.push(*offset);
                let t = self.ty(ty);
                self.bytes.extend(t);
            }
            self.bytes.push(0);
        }

        fn function(&mut self, name: &str, params: &[(&str, bool, &str)]) {
            self.entry(FUNCTION, name);
            for (param, output, ty) in params {
                self.entry(self.code(PARAM, PARAM_FAR), param);
                self.bytes.push(u8::from(*output));
                let t = self.ty(ty);
                self.bytes.extend(t);
            }
            self.bytes.push(0);
        }

        fn done(mut self) -> Vec<u8> {
            self.bytes.push(0);
            let len = (self.bytes.len() - 4) as u32;
            self.bytes[..4].copy_from_slice(&len.to_le_bytes());
            self.bytes
        }
    }

    const TYPES: &[&str] = &[
        "net.Conn",
        "net.conn",
        "*net.netFD",
        "internal/poll.FD",
        "int",
        "int32",
        "*runtime.funcval",
        "*runtime.g",
        "unsafe.Pointer",
        "*crypto/tls.Conn",
        "[]uint8",
        "error",
        "*net/http.persistConn",
    ];

    /// A unit as Go 1.27 writes these structs and functions.
    fn go_like() -> Unit {
        go_like_in(Unit::new(TYPES))
    }

    /// `u` with Go's structs and `crypto/tls` methods added.
    fn go_like_in(mut u: Unit) -> Unit {
        u.structure(
            "crypto/tls.Conn",
            &[("conn", 0, "net.Conn"), ("isClient", 16, "int")],
        );
        u.structure("net.TCPConn", &[("conn", 0, "net.conn")]);
        u.structure("net.conn", &[("fd", 8, "*net.netFD")]);
        u.structure("net.netFD", &[("pfd", 0, "internal/poll.FD")]);
        u.structure(
            "internal/poll.FD",
            &[("fdmu", 0, "int"), ("Sysfd", 16, "int")],
        );
        for f in [super::super::READ, super::super::WRITE] {
            u.function(
                f,
                &[
                    ("c", false, "*crypto/tls.Conn"),
                    ("b", false, "[]uint8"),
                    ("~r0", true, "int"),
                    ("~r1", true, "error"),
                ],
            );
        }
        u
    }

    fn newproc1(u: &mut Unit, second: (&str, &str)) {
        u.function(
            super::super::NEWPROC1,
            &[
                ("fn", false, "*runtime.funcval"),
                (second.0, false, second.1),
                ("callerpc", false, "int"),
                ("~r0", true, "*runtime.g"),
            ],
        );
    }

    fn handoff(u: &mut Unit) {
        for f in [super::super::ROUND_TRIP, super::super::WRITE_LOOP] {
            u.function(f, &[("pc", false, "*net/http.persistConn")]);
        }
    }

    /// What [`go_like`] with `newproc1` and the hand-off gives.
    fn assert_all_found(a: &Answers) {
        assert_eq!(
            a.fields,
            Some(Fields {
                conn: 0,
                netfd: 8,
                sysfd: 16
            })
        );
        assert_eq!(
            (a.tls, a.newproc1, a.handoff),
            (Check::Holds, Check::Holds, Check::Holds)
        );
    }

    fn answers(u: Unit) -> Answers {
        from_sections(&u.done(), &abbrev(), &[]).unwrap()
    }

    #[test]
    fn members_and_signatures_as_go_writes_them_are_read() {
        let mut u = go_like();
        newproc1(&mut u, ("callergp", "*runtime.g"));
        handoff(&mut u);
        let a = answers(u);
        assert_all_found(&a);
    }

    #[test]
    fn types_in_another_unit_are_found_and_the_walk_stops_once_all_is() {
        // Go's layout: the types in a unit of their own, referred to
        // across units.
        let types = Unit::new(TYPES);
        let far: Vec<(String, u32)> = types.types.clone();
        let mut info = types.done();
        let mut u = Unit::new(&[]);
        u.far = Some(far);
        let mut u = go_like_in(u);
        newproc1(&mut u, ("callergp", "*runtime.g"));
        handoff(&mut u);
        // After all that is needed, an entry that closes the last one,
        // then one that does not parse: the walk never reads it.
        u.entry(TYPE, "decoy");
        u.bytes.push(99);
        info.extend(u.done());
        let a = from_sections(&info, &abbrev(), &[]).unwrap();
        assert_all_found(&a);
    }

    #[test]
    fn a_result_listed_twice_is_one_result() {
        let mut u = go_like();
        u.function(
            super::super::NEWPROC1,
            &[
                ("fn", false, "*runtime.funcval"),
                ("callergp", false, "*runtime.g"),
                ("~r0", true, "*runtime.g"),
                ("~r0", true, "*runtime.g"),
            ],
        );
        assert_eq!(answers(u).newproc1, Check::Holds);
    }

    #[test]
    fn a_retyped_or_missing_member_gives_no_offsets() {
        let mut u = Unit::new(TYPES);
        u.structure("crypto/tls.Conn", &[("conn", 0, "net.Conn")]);
        u.structure("net.TCPConn", &[("conn", 0, "net.conn")]);
        u.structure("net.conn", &[("fd", 8, "*net.netFD")]);
        u.structure("net.netFD", &[("pfd", 0, "internal/poll.FD")]);
        u.structure("internal/poll.FD", &[("Sysfd", 16, "int32")]);
        assert_eq!(answers(u).fields, None);
        let mut u = Unit::new(TYPES);
        u.structure("crypto/tls.Conn", &[("conn", 0, "net.Conn")]);
        u.structure("net.TCPConn", &[("conn", 0, "net.conn")]);
        u.structure("net.conn", &[("fd", 8, "*net.netFD")]);
        u.structure("internal/poll.FD", &[("Sysfd", 16, "int")]);
        assert_eq!(answers(u).fields, None);
    }

    #[test]
    fn a_member_of_a_nested_struct_is_not_the_outer_ones() {
        let mut u = Unit::new(TYPES);
        u.structure("crypto/tls.Conn", &[("conn", 0, "net.Conn")]);
        u.structure("net.TCPConn", &[("conn", 0, "net.conn")]);
        u.structure("net.conn", &[("fd", 8, "*net.netFD")]);
        u.structure("net.netFD", &[("pfd", 0, "internal/poll.FD")]);
        // poll.FD with a nested struct whose member is named Sysfd.
        u.entry(STRUCT, "internal/poll.FD");
        u.structure("inner", &[("Sysfd", 40, "int")]);
        u.bytes.push(0);
        assert_eq!(answers(u).fields, None);
    }

    #[test]
    fn a_function_whose_arguments_moved_is_not_checked() {
        // Go 1.17's newproc1(fn, argp, narg, callergp, callerpc).
        let mut u = go_like();
        newproc1(&mut u, ("argp", "unsafe.Pointer"));
        let a = answers(u);
        assert!(a.fields.is_some());
        assert_eq!(
            (a.tls, a.newproc1, a.handoff),
            (Check::Holds, Check::Differs, Check::NotFound)
        );
        assert!(!a.newproc1.trusted(true) && a.handoff.trusted(true));
        assert!(!a.handoff.trusted(false));
        // The right name, of another type.
        let mut u = go_like();
        newproc1(&mut u, ("callergp", "unsafe.Pointer"));
        assert_eq!(answers(u).newproc1, Check::Differs);
        // The right names, a result of another type.
        let mut u = go_like();
        u.function(
            super::super::NEWPROC1,
            &[
                ("fn", false, "*runtime.funcval"),
                ("callergp", false, "*runtime.g"),
                ("~r0", true, "unsafe.Pointer"),
            ],
        );
        assert_eq!(answers(u).newproc1, Check::Differs);
    }

    #[test]
    fn bytes_that_are_not_dwarf_are_an_error_or_no_answer() {
        assert!(from_sections(&[0xff; 40], &abbrev(), &[]).is_err());
        assert_eq!(from_sections(&[], &[], &[]).unwrap(), Answers::default());
    }
}
