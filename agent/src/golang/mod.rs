//! Go executables: whether one holds `crypto/tls`, where its `Read` and
//! `Write` methods start and return, and where its data lives, so that the
//! probes can read Go's TLS plaintext (see `go_tls.rs` in the probes).
//!
//! Everything comes from the file, and works on stripped binaries:
//! - the Go version from `.go.buildinfo`;
//! - the functions from the symbol table when there is one, else from the
//!   runtime's own function table, `.gopclntab`;
//! - their `RET`s by decoding them ([`returns`]);
//! - struct field offsets from a table per Go release line, generated from
//!   each toolchain ([`offsets`]). A release not in it is not hooked.
//!
//! Pure: the caller reads the file and the process's maps.

mod buildinfo;
mod offsets;
mod pclntab;
mod returns;

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use zerospan_common::GoProc;

pub const READ: &str = "crypto/tls.(*Conn).Read";
pub const WRITE: &str = "crypto/tls.(*Conn).Write";

/// Where one Go release line keeps the fields the probes follow from a
/// `*tls.Conn` to its socket's fd (see [`GoProc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub release: &'static str,
    pub conn: u16,
    pub netfd: u16,
    pub sysfd: u16,
}

/// `abi.Type`'s `TFlag`, `Kind_` and `Str` (`runtime._type` before Go
/// 1.21): the same place since Go 1.14. Were they ever wrong, the probes'
/// check of the connection's type would fail, and the calls would be
/// counted and left alone, never misread.
const TYPE_TFLAG: u16 = 20;
const TYPE_KIND: u16 = 23;
const TYPE_STR: u16 = 40;

/// A method to probe, as file offsets (what uprobes take).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// A Go executable with `crypto/tls`, as the probes need it.
#[derive(Clone, Debug)]
pub struct GoTls {
    pub version: String,
    pub read: Function,
    pub write: Function,
    /// The address of `runtime.types` in the file.
    types: u64,
    layout: Layout,
    /// The first loaded address, for a position-independent executable
    /// (its addresses move by where it is loaded); `None` otherwise.
    pie_base: Option<u64>,
}

impl GoTls {
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
            conn: self.layout.conn,
            netfd: self.layout.netfd,
            sysfd: self.layout.sysfd,
            type_str: TYPE_STR,
            type_tflag: TYPE_TFLAG,
            type_kind: TYPE_KIND,
            _pad: 0,
        })
    }

    pub fn is_pie(&self) -> bool {
        self.pie_base.is_some()
    }
}

/// Why a Go binary with `crypto/tls` is left alone.
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    #[error("its Go version ({0}) is not in the field-offset table (known: {known})", known = known_releases())]
    Version(String),
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
}

impl Unsupported {
    /// A short label for counting, and for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            Unsupported::Version(_) => "version",
            Unsupported::Arch(_) => "arch",
            Unsupported::Pclntab(_) => "pclntab",
            Unsupported::Code(..) | Unsupported::Outside(_) => "code",
            Unsupported::NoTypes => "types",
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

/// Whether an ELF file is a Go program (it has Go's build information).
pub fn is_go(data: &[u8]) -> bool {
    object::File::parse(data).is_ok_and(|obj| obj.section_by_name(".go.buildinfo").is_some())
}

/// Looks at an ELF file: `Ok(None)` if it is not a Go program with
/// `crypto/tls` (nothing to do), `Err` if it is one the probes cannot
/// read for sure.
pub fn inspect(data: &[u8]) -> Result<Option<GoTls>, Unsupported> {
    let Ok(obj) = object::File::parse(data) else {
        return Ok(None);
    };
    let Some(buildinfo) = obj.section_by_name(".go.buildinfo") else {
        return Ok(None);
    };
    let Some((read, write)) = functions(&obj)? else {
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
    let layout = buildinfo::release_line(&version)
        .and_then(|line| offsets::LAYOUTS.iter().find(|l| l.release == line))
        .copied()
        .ok_or_else(|| Unsupported::Version(version.clone()))?;
    let types = symbol(&obj, "runtime.types")
        .map(|(a, _)| a)
        .or_else(|| obj.section_by_name(".go.type").map(|s| s.address()))
        .or_else(|| obj.section_by_name(".rodata").map(|s| s.address()))
        .ok_or(Unsupported::NoTypes)?;
    let pie_base = (obj.kind() == object::ObjectKind::Dynamic)
        .then(|| obj.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff);
    Ok(Some(GoTls {
        version,
        read: probe_points(&obj, READ, read)?,
        write: probe_points(&obj, WRITE, write)?,
        types,
        layout,
        pie_base,
    }))
}

/// The address range of `Read` and `Write`, if the binary has both.
type Range = (u64, u64);

fn functions(obj: &object::File<'_>) -> Result<Option<(Range, Range)>, Unsupported> {
    if let (Some(r), Some(w)) = (symbol(obj, READ), symbol(obj, WRITE)) {
        return Ok(Some((r, w)));
    }
    let Some(section) = obj.section_by_name(".gopclntab") else {
        return Ok(None);
    };
    let table = pclntab::Pclntab::parse(section.data().unwrap_or_default())?;
    let (Some(r), Some(w)) = (table.find(READ), table.find(WRITE)) else {
        return Ok(None);
    };
    // Go 1.26 and later leave the text start out: it is `runtime.text`,
    // the start of `.text` when Go links the binary itself. Were it not,
    // the stack check would not be where a function starts, and the
    // binary would be refused, not misprobed.
    let text = match table.text_start() {
        0 => symbol(obj, "runtime.text")
            .map(|(a, _)| a)
            .or_else(|| obj.section_by_name(".text").map(|s| s.address()))
            .unwrap_or(0),
        t => t,
    };
    let at = |(start, end): Range| (text.saturating_add(start), text.saturating_add(end));
    Ok(Some((at(r), at(w))))
}

/// A function symbol's address range.
fn symbol(obj: &object::File<'_>, name: &str) -> Option<Range> {
    obj.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| (s.address(), s.address().saturating_add(s.size())))
}

/// The entry and `RET`s of the function at `range`, as file offsets.
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
    let rets = returns::returns(code, start).map_err(|e| Unsupported::Code(name, e))?;
    Ok(Function {
        entry: offset(start),
        returns: rets.into_iter().map(offset).collect(),
    })
}
