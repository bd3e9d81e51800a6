//! Go executables: where their `crypto/tls` `Read` and `Write` methods,
//! their goroutine maker and `net/http`'s hand-off start and return, and
//! where their data lives, so that the probes can read Go's TLS plaintext
//! (see `go_tls.rs` in the probes) and follow goroutines (`go_runtime.rs`).
//!
//! Everything comes from the file, and works on stripped binaries:
//! - the Go version from `.go.buildinfo`;
//! - the functions from the symbol table when there is one, else from the
//!   runtime's own function table, `.gopclntab`;
//! - their `RET`s by decoding them ([`returns`]);
//! - struct field offsets from the binary's own DWARF when it keeps it
//!   ([`dwarf`]), else from a table per Go release line, generated from
//!   each toolchain ([`offsets`]). A stripped binary of a release not in
//!   it is not hooked, nor is one of a release before 1.19;
//! - where a thread keeps its running goroutine, from the TLS segment.
//!
//! Pure: the caller reads the file and the process's maps.

mod buildinfo;
mod dwarf;
mod offsets;
mod pclntab;
mod returns;

use object::{
    read::elf::ProgramHeader as _, Object as _, ObjectSection as _, ObjectSegment as _,
    ObjectSymbol as _,
};
use zerospan_common::{go_g, GoProc};

/// The oldest Go release line hooked: `go1.19`.
const OLDEST_MINOR: u32 = 19;

pub const READ: &str = "crypto/tls.(*Conn).Read";
pub const WRITE: &str = "crypto/tls.(*Conn).Write";
pub const NEWPROC1: &str = "runtime.newproc1";
pub const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
pub const WRITE_LOOP: &str = "net/http.(*persistConn).writeLoop";

/// Where one Go release line keeps the fields the probes follow from a
/// `*tls.Conn` to its socket's fd (see [`GoProc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub release: &'static str,
    pub conn: u16,
    pub netfd: u16,
    pub sysfd: u16,
}

impl Layout {
    fn fields(&self) -> Fields {
        Fields {
            conn: self.conn,
            netfd: self.netfd,
            sysfd: self.sysfd,
        }
    }
}

/// The offsets of the fields from a `*tls.Conn` to its socket's fd:
/// `tls.Conn.conn`, `net.TCPConn`'s `fd` (through its embedded `conn`),
/// and `poll.FD.Sysfd` from the start of a `netFD` (through its `pfd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields {
    pub conn: u16,
    pub netfd: u16,
    pub sysfd: u16,
}

/// Where a binary's field offsets came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsFrom {
    /// Its own DWARF.
    Dwarf,
    /// The table row of its release line: it has no DWARF, or (the
    /// reason) one that did not answer.
    Table(Option<String>),
}

/// `abi.Type`'s `TFlag`, `Kind_` and `Str` (`runtime._type` before Go
/// 1.21): the same place since Go 1.14. Were they ever wrong, the probes'
/// check of the connection's type would fail, and the calls would be
/// counted and left alone, never misread.
const TYPE_TFLAG: u16 = 20;
const TYPE_KIND: u16 = 23;
const TYPE_STR: u16 = 40;

/// Where to probe a function, as file offsets (what uprobes take): its
/// entry probe on the stack check's branch (see [`returns`]), and every `RET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// Go's `crypto/tls` methods in an executable.
#[derive(Clone, Debug)]
pub struct TlsMethods {
    pub read: Function,
    pub write: Function,
}

/// The functions the probes follow goroutines through in an executable.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// `runtime.newproc1`, which makes every goroutine.
    pub newproc1: Function,
    /// The entries of `net/http.(*persistConn).roundTrip` and `writeLoop`,
    /// if it has `net/http`'s client: a request asked for on one goroutine
    /// is written by the connection's writer goroutine.
    pub http_handoff: Option<(u64, u64)>,
}

/// A Go executable, as the probes need it.
#[derive(Clone, Debug)]
pub struct GoBinary {
    pub version: String,
    /// Its `crypto/tls`, if it links it.
    pub tls: Option<TlsMethods>,
    /// Its goroutines, unless where a thread keeps the running one is not
    /// known (then they are not followed, and its calls stay roots).
    pub goroutines: Result<Runtime, Unsupported>,
    /// The address of `runtime.types` in the file.
    types: u64,
    fields: Fields,
    pub offsets_from: OffsetsFrom,
    /// The first loaded address, for a position-independent executable
    /// (its addresses move by where it is loaded); `None` otherwise.
    pie_base: Option<u64>,
    /// Where the running goroutine is, from a thread's fs base.
    tls_g: i64,
}

impl GoBinary {
    /// What the probes need for one process that runs this binary, loaded
    /// at `load` (the start of its first mapping; ignored unless PIE).
    pub fn proc_info(&self, load: Option<u64>) -> Option<GoProc> {
        let bias = match self.pie_base {
            None => 0,
            Some(base) => load?.checked_sub(base)?,
        };
        Some(GoProc {
            types: self.types.checked_add(bias)?,
            tcp_conn_itab: 0,
            conn: self.fields.conn,
            netfd: self.fields.netfd,
            sysfd: self.fields.sysfd,
            type_str: TYPE_STR,
            type_tflag: TYPE_TFLAG,
            type_kind: TYPE_KIND,
            _pad: 0,
            tls_g: self.tls_g,
            g_state: go_g::UNCHECKED,
            _pad2: [0; 7],
        })
    }

    pub fn is_pie(&self) -> bool {
        self.pie_base.is_some()
    }
}

/// Why a Go binary, or a part of it, is left alone.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unsupported {
    #[error(
        "its Go version ({0}) is not in the field-offset table (known: {known}), \
         and it keeps no DWARF that gives them",
        known = known_releases()
    )]
    Version(String),
    #[error("its Go version ({0}) is older than go1.{OLDEST_MINOR}, the oldest the probes know")]
    TooOld(String),
    #[error("its Go version ({0}) names no release line")]
    NoRelease(String),
    #[error("its Go version ({0}) is not in the field-offset table, and {1}")]
    Dwarf(String, dwarf::Error),
    #[error(
        "its DWARF shows {0} not taking the arguments the probes read where \
         they read them, or its release is not in the table and its DWARF \
         does not show them"
    )]
    Signature(&'static str),
    #[error("it is built for {0:?}; the probes read amd64's registers")]
    Arch(object::Architecture),
    #[error("{0}")]
    Pclntab(#[from] pclntab::Error),
    #[error("{0}: {1}")]
    Code(&'static str, returns::Error),
    #[error("{0} lies outside its code")]
    Outside(&'static str),
    #[error("it has neither runtime.types, .go.type nor .rodata")]
    NoTypes,
    #[error("it has no {0}")]
    Missing(&'static str),
    #[error(
        "where its threads keep the running goroutine is not known \
         (no runtime.tlsg, and a TLS segment of {0} bytes)"
    )]
    TlsSlot(u64),
    #[error("it has no TLS segment (where Go keeps the running goroutine)")]
    NoTls,
}

impl Unsupported {
    /// A short label for counting, and for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            Unsupported::Version(_) | Unsupported::TooOld(_) | Unsupported::NoRelease(_) => {
                "version"
            }
            Unsupported::Dwarf(..) => "dwarf",
            Unsupported::Signature(_) => "signature",
            Unsupported::Arch(_) => "arch",
            Unsupported::Pclntab(_) => "pclntab",
            Unsupported::Code(..) | Unsupported::Outside(_) => "code",
            Unsupported::NoTypes => "types",
            Unsupported::Missing(_) => "missing",
            Unsupported::TlsSlot(_) | Unsupported::NoTls => "tls_slot",
        }
    }
}

fn known_releases() -> String {
    offsets::LAYOUTS
        .iter()
        .map(|l| l.release)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Looks at an ELF file: `Ok(None)` if it is not a Go program (nothing to
/// do), `Err` if it is one the probes cannot read for sure. Within one
/// they can, a part they cannot (its goroutines) says why in its place.
pub fn inspect(data: &[u8]) -> Result<Option<GoBinary>, Unsupported> {
    let Ok(obj) = object::File::parse(data) else {
        return Ok(None);
    };
    let Some(buildinfo) = obj.section_by_name(".go.buildinfo") else {
        return Ok(None);
    };
    let version = buildinfo
        .data()
        .ok()
        .and_then(buildinfo::version)
        .unwrap_or("before go1.18")
        .to_owned();
    if obj.architecture() != object::Architecture::X86_64 {
        return Err(Unsupported::Arch(obj.architecture()));
    }
    // The field offsets come from the binary's DWARF when it keeps it,
    // else from its release line's row. The registers `newproc1` takes
    // its arguments in are known for the table's releases, and for
    // another only where its DWARF shows them.
    let line = buildinfo::release_line(&version);
    let row = line
        .and_then(|line| offsets::LAYOUTS.iter().find(|l| l.release == line))
        .map(Layout::fields);
    // Older releases were never tested (Go 1.17's newproc1 takes other
    // arguments; before it, another ABI): refused, whatever DWARF says.
    match line.and_then(buildinfo::minor) {
        Some(m) if m >= OLDEST_MINOR => {}
        Some(_) => return Err(Unsupported::TooOld(version)),
        None => return Err(Unsupported::NoRelease(version)),
    }
    let known = row.is_some();
    let (answers, dwarf_error) = match dwarf::read(&obj) {
        Ok(a) => (a, None),
        Err(e) => (None, Some(e)),
    };
    let (fields, offsets_from) = match (answers.as_ref().and_then(|a| a.fields), row) {
        (Some(f), _) => (f, OffsetsFrom::Dwarf),
        (None, Some(f)) => {
            // Said in the log: a DWARF that was there but did not answer.
            let why = match (&dwarf_error, &answers) {
                (Some(e), _) => Some(e.to_string()),
                (None, Some(_)) => Some("its DWARF lacks a field, or has it retyped".to_owned()),
                (None, None) => None,
            };
            (f, OffsetsFrom::Table(why))
        }
        (None, None) => {
            return Err(match dwarf_error {
                Some(e) => Unsupported::Dwarf(version, e),
                None => Unsupported::Version(version),
            })
        }
    };
    // The functions whose arguments the probes read: as DWARF says they
    // are, else as the table's releases have them. A contradiction from
    // DWARF refuses them even in a known release.
    let answers = answers.unwrap_or_default();
    let find = Finder::new(&obj)?;
    let tls = match (find.range(READ), find.range(WRITE)) {
        (Some(_), Some(_)) if !answers.tls.trusted(known) => {
            return Err(Unsupported::Signature("crypto/tls's Read or Write"))
        }
        (Some(r), Some(w)) => Some(TlsMethods {
            read: probe_points(&obj, READ, r)?,
            write: probe_points(&obj, WRITE, w)?,
        }),
        _ => None,
    };
    let types = symbol(&obj, "runtime.types")
        .map(|(a, _)| a)
        .or_else(|| obj.section_by_name(".go.type").map(|s| s.address()))
        .or_else(|| obj.section_by_name(".rodata").map(|s| s.address()))
        .ok_or(Unsupported::NoTypes)?;
    let slot = tls_slot(&obj);
    let goroutines = slot.clone().and_then(|_| {
        if !answers.newproc1.trusted(known) {
            return Err(Unsupported::Signature(NEWPROC1));
        }
        goroutines(&obj, &find, answers.handoff.trusted(known))
    });
    // 0 tells the probes the slot is unknown, or not to be used.
    let tls_g = match (&goroutines, slot) {
        (Ok(_), Ok(at)) => at,
        _ => 0,
    };
    let pie_base = (obj.kind() == object::ObjectKind::Dynamic)
        .then(|| obj.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff);
    Ok(Some(GoBinary {
        version,
        tls,
        tls_g,
        goroutines,
        types,
        fields,
        offsets_from,
        pie_base,
    }))
}

/// `newproc1` with its `RET`s, and `net/http`'s hand-off if the binary
/// has its client (both functions, or neither) and its arguments are
/// where the probes read them (`handoff`).
fn goroutines(
    obj: &object::File<'_>,
    find: &Finder<'_, '_>,
    handoff: bool,
) -> Result<Runtime, Unsupported> {
    let range = find.range(NEWPROC1).ok_or(Unsupported::Missing(NEWPROC1))?;
    let newproc1 = probe_points(obj, NEWPROC1, range)?;
    let http_handoff = match (find.range(ROUND_TRIP), find.range(WRITE_LOOP)) {
        (Some(rt), Some(wl)) if handoff => Some((
            probe_points(obj, ROUND_TRIP, rt)?.entry,
            probe_points(obj, WRITE_LOOP, wl)?.entry,
        )),
        _ => None,
    };
    Ok(Runtime {
        newproc1,
        http_handoff,
    })
}

/// Where a thread keeps the running goroutine, from its fs base: Go's
/// `runtime.tlsg`, a thread-local variable of the executable, whose TLS
/// block ends right at the thread pointer (x86-64's variant II). Go alone
/// in the block, as when it links the binary itself, is at -8; a binary
/// linked with C code that has TLS of its own needs the symbol to say
/// where. The probes check the answer against R14 before they use it.
fn tls_slot(obj: &object::File<'_>) -> Result<i64, Unsupported> {
    let object::File::Elf64(elf) = obj else {
        return Err(Unsupported::NoTls);
    };
    let endian = elf.endian();
    let segment = elf
        .elf_program_headers()
        .iter()
        .find(|p| p.p_type(endian) == object::elf::PT_TLS)
        .ok_or(Unsupported::NoTls)?;
    let size = segment.p_memsz(endian);
    let align = segment.p_align(endian).max(1);
    let block = size
        .checked_next_multiple_of(align)
        .ok_or(Unsupported::TlsSlot(size))?;
    let at = match symbol(obj, "runtime.tlsg") {
        Some((value, _)) => value,
        None if size <= 8 => 0,
        None => return Err(Unsupported::TlsSlot(size)),
    };
    match (i64::try_from(at), i64::try_from(block)) {
        (Ok(at), Ok(block)) if at + 8 <= block => Ok(at - block),
        _ => Err(Unsupported::TlsSlot(size)),
    }
}

/// A function's address range.
type Range = (u64, u64);

/// Finds functions: by symbol when the binary has its symbol table, else
/// in `.gopclntab`, which stripping keeps.
struct Finder<'o, 'd> {
    obj: &'o object::File<'d>,
    table: Option<pclntab::Pclntab<'d>>,
    /// Where `.gopclntab`'s offsets count from.
    text: u64,
}

impl<'o, 'd> Finder<'o, 'd> {
    fn new(obj: &'o object::File<'d>) -> Result<Self, Unsupported> {
        let table = match obj.section_by_name(".gopclntab") {
            Some(s) if symbol(obj, NEWPROC1).is_none() => {
                Some(pclntab::Pclntab::parse(s.data().unwrap_or_default())?)
            }
            _ => None,
        };
        // Go 1.26 and later leave the text start out: it is
        // `runtime.text`, the start of `.text` when Go links the binary
        // itself. Were it not, the stack check would not be where a
        // function starts, and the binary would be refused, not
        // misprobed.
        let text = match table.as_ref().map(pclntab::Pclntab::text_start) {
            Some(0) => symbol(obj, "runtime.text")
                .map(|(a, _)| a)
                .or_else(|| obj.section_by_name(".text").map(|s| s.address()))
                .unwrap_or(0),
            Some(t) => t,
            None => 0,
        };
        Ok(Finder { obj, table, text })
    }

    fn range(&self, name: &str) -> Option<Range> {
        let Some(table) = &self.table else {
            return symbol(self.obj, name);
        };
        let (start, end) = table.find(name)?;
        Some((
            self.text.saturating_add(start),
            self.text.saturating_add(end),
        ))
    }
}

/// A function symbol's address range.
fn symbol(obj: &object::File<'_>, name: &str) -> Option<Range> {
    obj.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| (s.address(), s.address().saturating_add(s.size())))
}

/// Where to probe the function at `range` (its entry, see
/// [`returns::points`], and its `RET`s), as file offsets.
fn probe_points(
    obj: &object::File<'_>,
    name: &'static str,
    (start, end): Range,
) -> Result<Function, Unsupported> {
    let section = obj
        .sections()
        .find(|s| {
            s.address() <= start && start <= end && end <= s.address().saturating_add(s.size())
        })
        .ok_or(Unsupported::Outside(name))?;
    let (file_start, _) = section.file_range().ok_or(Unsupported::Outside(name))?;
    let data = section.data().map_err(|_| Unsupported::Outside(name))?;
    let from = (start - section.address()) as usize;
    let to = (end - section.address()) as usize;
    let code = data.get(from..to).ok_or(Unsupported::Outside(name))?;
    let offset = |addr: u64| file_start + (addr - section.address());
    let points = returns::points(code, start).map_err(|e| Unsupported::Code(name, e))?;
    Ok(Function {
        entry: offset(points.entry),
        returns: points.returns.into_iter().map(offset).collect(),
    })
}

/// For the fuzz target (`fuzz/fuzz_targets/go_binary.rs`): the first byte
/// picks one of this module's readers of file bytes, which reads the rest.
/// None may panic, loop or allocate without bound, whatever the file.
pub fn fuzz_readers(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(table) = pclntab::Pclntab::parse(rest) {
                let _ = table.text_start();
                for name in [READ, WRITE, NEWPROC1, ROUND_TRIP, WRITE_LOOP] {
                    let _ = table.find(name);
                }
            }
        }
        1 => {
            if let Some(v) = buildinfo::version(rest) {
                let _ = buildinfo::release_line(v);
            }
        }
        2 => {
            let _ = returns::points(rest, 0x40_1000);
        }
        3 => {
            // Two sections, the first's length in the first two bytes.
            let Some((len, rest)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let at = usize::from(u16::from_le_bytes(*len)).min(rest.len());
            let (abbrev, info) = rest.split_at(at);
            let _ = dwarf::from_sections(info, abbrev, &[]);
        }
        _ => {
            let _ = inspect(rest);
        }
    }
}
