//! Where to probe OpenSSL's reads and writes for one trap per call.
//!
//! A uprobe replaces an instruction with a breakpoint. When it fires, the
//! kernel either emulates the instruction it replaced or copies it out of
//! line and single-steps it: a second trap. On x86-64, Linux 6.18 emulates
//! `push` of a register, calls and jumps, not `sub`, `mov` or `endbr64`
//! (an older kernel that single-steps `push` too makes the internal probe
//! point cost what the public one did, no more), and on a
//! virtual machine the single step is dear: about 15 µs a call on this
//! project's CI machine, against 0.4 µs for a probe on a `push` (0.6 µs
//! with its return probe), measured by `cargo xtask bench uprobe`.
//!
//! Debian's `SSL_read` and `SSL_write` begin with `sub $0x18, %rsp`, and a
//! return probe can only sit where the function is entered (it swaps the
//! return address at the top of the stack). So the probes go one call
//! deeper: `SSL_read` and `SSL_read_ex` both call OpenSSL's
//! `ssl_read_internal(s, buf, num, &readbytes)`, which takes the `_ex`
//! form's arguments, returns its result, and begins with pushes; writes
//! go through `ssl_write_internal` the same way (in OpenSSL 3.0 and 3.1;
//! from 3.2 it takes a fifth argument, and the checks refuse it). The
//! `_ex` programs on those two see every read and write, whichever public
//! function made it.
//!
//! The internal functions have no symbols. They are found as the first
//! call in the public functions' code, and used only when every check
//! below holds, for reads and writes apart; otherwise the public functions
//! are probed as before, correct but dear. A wrong guess would attach the
//! programs to some other function, or read a count from the wrong
//! register, so each check refuses rather than guesses: both forms call
//! the same unexported function, with their own `s`, `buf` and `num`
//! (the plain form only widening `num`), a count pointer the plain form
//! points at its own stack and the `_ex` form passes on, and no fifth
//! argument.

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

/// Where to probe reads and writes: each, as a file offset (what uprobes
/// take) on its internal function, or why the public pair is probed.
/// The two are found apart: one may be cheap where the other is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Internals {
    pub read: Result<u64, Unsuitable>,
    pub write: Result<u64, Unsuitable>,
}

/// The public functions, as (plain, `_ex`) pairs: both of a pair must
/// call the same internal function first.
const READ: (&str, &str) = ("SSL_read", "SSL_read_ex");
const WRITE: (&str, &str) = ("SSL_write", "SSL_write_ex");

/// Instructions decoded, at most, looking for the first call.
const MAX_PROLOGUE: usize = 32;

/// Why the public functions are probed themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsuitable {
    #[error("the file has no {0}")]
    Missing(&'static str),
    #[error("{0} itself begins with an instruction the kernel emulates")]
    AlreadyEmulated(&'static str),
    #[error("no call to an internal function starts {0}")]
    NoCall(&'static str),
    #[error("{0} does not call with its own arguments and a count pointer on its stack")]
    ArgumentsMoved(&'static str),
    #[error("{0} and {1} call different functions first")]
    Disagree(&'static str, &'static str),
    #[error("{0} is not in the file's code")]
    Outside(&'static str),
    #[error("what {0} calls is exported, or not in the file's code")]
    NotInternal(&'static str),
    #[error("what {0} calls begins with an instruction the kernel single-steps")]
    NotEmulated(&'static str),
    #[error("reads and writes call the same function")]
    Same,
}

impl Unsuitable {
    /// Whether probing the public functions costs a single step: worth
    /// saying, since every TLS call pays it.
    pub fn is_dear(self) -> bool {
        !matches!(
            self,
            Unsuitable::Missing(_) | Unsuitable::AlreadyEmulated(_)
        )
    }
}

/// The internal read and write functions of the OpenSSL in `obj`; `Err`
/// when it is no OpenSSL (no `SSL_read`).
pub fn internals(obj: &object::File<'_>) -> Result<Internals, Unsuitable> {
    let lib = Library::of(obj)?;
    let read = lib.internal(READ);
    let write = lib.internal(WRITE);
    if read.is_ok() && read == write {
        return Ok(Internals {
            read: Err(Unsuitable::Same),
            write: Err(Unsuitable::Same),
        });
    }
    Ok(Internals { read, write })
}

/// The file's exported functions and its code sections.
struct Library<'d, 'f> {
    obj: &'f object::File<'d>,
    exported: Vec<(&'d str, u64)>,
}

impl<'d, 'f> Library<'d, 'f> {
    fn of(obj: &'f object::File<'d>) -> Result<Self, Unsuitable> {
        let exported: Vec<_> = obj
            .dynamic_symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.section_index().is_some())
            .filter_map(|s| Some((s.name().ok()?, s.address())))
            .collect();
        let lib = Library { obj, exported };
        lib.address(READ.0)?;
        Ok(lib)
    }

    fn address(&self, name: &'static str) -> Result<u64, Unsuitable> {
        self.exported
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, a)| a)
            .ok_or(Unsuitable::Missing(name))
    }

    /// The probe point, as a file offset, on the function both of `pair`
    /// call first.
    fn internal(&self, (plain, ex): (&'static str, &'static str)) -> Result<u64, Unsuitable> {
        let (plain_at, ex_at) = (self.address(plain)?, self.address(ex)?);
        for (name, at) in [(plain, plain_at), (ex, ex_at)] {
            let (code, _) = self.code_at(at).ok_or(Unsuitable::Outside(name))?;
            // At the symbol itself, where the public functions are probed
            // (a leading endbr64 would be single-stepped there).
            if emulated_entry(code) == Some(0) {
                return Err(Unsuitable::AlreadyEmulated(name));
            }
        }
        let target = self.first_call(plain, plain_at, Form::Plain)?;
        if self.first_call(ex, ex_at, Form::Ex)? != target {
            return Err(Unsuitable::Disagree(plain, ex));
        }
        if self.exported.iter().any(|&(_, a)| a == target) {
            return Err(Unsuitable::NotInternal(plain));
        }
        let (code, offset) = self.code_at(target).ok_or(Unsuitable::NotInternal(plain))?;
        let skip = emulated_entry(code).ok_or(Unsuitable::NotEmulated(plain))?;
        Ok(offset + skip)
    }

    fn first_call(&self, name: &'static str, at: u64, form: Form) -> Result<u64, Unsuitable> {
        let (code, _) = self.code_at(at).ok_or(Unsuitable::Outside(name))?;
        first_call(code, at, form).map_err(|e| match e {
            Prologue::NoCall => Unsuitable::NoCall(name),
            Prologue::ArgumentsMoved => Unsuitable::ArgumentsMoved(name),
        })
    }

    /// The code from `addr` to the end of its section, and `addr`'s file
    /// offset, if `addr` is in a code section other than the PLT's.
    fn code_at(&self, addr: u64) -> Option<(&'d [u8], u64)> {
        let section = self.obj.sections().find(|s| {
            s.kind() == SectionKind::Text
                && s.address() <= addr
                && addr < s.address().saturating_add(s.size())
        })?;
        if section.name().is_ok_and(|n| n.starts_with(".plt")) {
            return None;
        }
        let into = addr - section.address();
        let (file_start, _) = section.file_range()?;
        let data = section.data().ok()?;
        Some((data.get(usize::try_from(into).ok()?..)?, file_start + into))
    }
}

/// Where in a function starting with `code` a probe is emulated: its
/// first instruction if that is a `push` of a register, or the `push`
/// right after a leading `endbr64` (which only marks an indirect branch's
/// target; the stack is untouched, so a return probe may sit there).
fn emulated_entry(code: &[u8]) -> Option<u64> {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    let (skip, rest) = match code.strip_prefix(&ENDBR64) {
        Some(rest) => (ENDBR64.len() as u64, rest),
        None => (0, code),
    };
    let mut decoder = Decoder::new(64, rest, DecoderOptions::NONE);
    let insn = decoder.decode();
    (matches!(insn.code(), Code::Push_r64) && insn.op0_kind() == OpKind::Register).then_some(skip)
}

#[derive(Debug, PartialEq, Eq)]
enum Prologue {
    NoCall,
    ArgumentsMoved,
}

/// Which public function a prologue is: the call it makes must be
/// `internal(s, buf, num, &count)`, the `_ex` form's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `SSL_read(s, buf, int num)`: widens `num` into RDX and points RCX
    /// at a count on its own stack.
    Plain,
    /// `SSL_read_ex(s, buf, size_t num, size_t *count)`: passes all four
    /// through, untouched.
    Ex,
}

/// The target of the first direct call in the function whose code, loaded
/// at `ip`, is `code`, if what comes before it is plain arithmetic, moves
/// and conditional branches (to error paths) that set up the call as
/// `form` must, and nothing more: a fifth argument (R8), as OpenSSL 3.2's
/// `ssl_write_internal(s, buf, num, flags, &written)` takes, or any other
/// write to the argument registers, refuses. Anything else refuses too.
fn first_call(code: &[u8], ip: u64, form: Form) -> Result<u64, Prologue> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut count_on_stack = false;
    for _ in 0..MAX_PROLOGUE {
        if !decoder.can_decode() {
            break;
        }
        let insn = decoder.decode();
        if insn.code() == Code::Call_rel32_64 {
            if form == Form::Plain && !count_on_stack {
                return Err(Prologue::ArgumentsMoved);
            }
            return Ok(insn.near_branch_target());
        }
        if !PLAIN.contains(&insn.mnemonic()) || insn.has_rep_prefix() || insn.has_repne_prefix() {
            return Err(Prologue::NoCall);
        }
        // Compares and pushes read their first operand; the rest write it.
        let reads_only = matches!(
            insn.mnemonic(),
            Mnemonic::Test | Mnemonic::Cmp | Mnemonic::Push
        );
        if reads_only || insn.op_count() == 0 || insn.op0_kind() != OpKind::Register {
            continue;
        }
        let written = insn.op0_register();
        let allowed = match (form, family(written)) {
            (_, None) => true,
            (Form::Plain, Some(Register::RCX)) => {
                let to_stack = is_stack_address(&insn);
                count_on_stack |= to_stack;
                to_stack
            }
            (Form::Plain, Some(Register::RDX)) => is_widening_num(&insn),
            _ => false,
        };
        if !allowed {
            return Err(Prologue::ArgumentsMoved);
        }
    }
    Err(Prologue::NoCall)
}

/// The argument register (RDI, RSI, RDX, RCX, R8) that `r` is all or part
/// of.
fn family(r: Register) -> Option<Register> {
    use Register as R;
    Some(match r {
        R::RDI | R::EDI | R::DI | R::DIL => R::RDI,
        R::RSI | R::ESI | R::SI | R::SIL => R::RSI,
        R::RDX | R::EDX | R::DX | R::DL | R::DH => R::RDX,
        R::RCX | R::ECX | R::CX | R::CL | R::CH => R::RCX,
        R::R8 | R::R8D | R::R8W | R::R8L => R::R8,
        _ => return None,
    })
}

/// `mov rcx, rsp` or `lea rcx, [rsp+d]`: the count pointer, at a local.
fn is_stack_address(insn: &iced_x86::Instruction) -> bool {
    if insn.op0_register() != Register::RCX || insn.op_count() != 2 {
        return false;
    }
    match insn.mnemonic() {
        Mnemonic::Mov => {
            insn.op1_kind() == OpKind::Register && insn.op1_register() == Register::RSP
        }
        Mnemonic::Lea => {
            insn.memory_base() == Register::RSP && insn.memory_index() == Register::None
        }
        _ => false,
    }
}

/// `movsxd rdx, edx` or `mov edx, edx`: `int num` widened in place.
fn is_widening_num(insn: &iced_x86::Instruction) -> bool {
    insn.op_count() == 2
        && insn.op1_kind() == OpKind::Register
        && insn.op1_register() == Register::EDX
        && match insn.mnemonic() {
            Mnemonic::Movsxd => insn.op0_register() == Register::RDX,
            Mnemonic::Mov => insn.op0_register() == Register::EDX,
            _ => false,
        }
}

/// What a prologue may hold before its call: each writes at most its first
/// operand (or, for the branches, nothing).
const PLAIN: &[Mnemonic] = &[
    Mnemonic::Sub,
    Mnemonic::Add,
    Mnemonic::And,
    Mnemonic::Or,
    Mnemonic::Xor,
    Mnemonic::Mov,
    Mnemonic::Movsxd,
    Mnemonic::Movzx,
    Mnemonic::Lea,
    Mnemonic::Test,
    Mnemonic::Cmp,
    Mnemonic::Push,
    Mnemonic::Nop,
    Mnemonic::Endbr64,
    Mnemonic::Jo,
    Mnemonic::Jno,
    Mnemonic::Jb,
    Mnemonic::Jae,
    Mnemonic::Je,
    Mnemonic::Jne,
    Mnemonic::Jbe,
    Mnemonic::Ja,
    Mnemonic::Js,
    Mnemonic::Jns,
    Mnemonic::Jp,
    Mnemonic::Jnp,
    Mnemonic::Jl,
    Mnemonic::Jge,
    Mnemonic::Jle,
    Mnemonic::Jg,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's OpenSSL 3.0 `SSL_read` up to its call (at +0x1e, to
    /// -0x1a3 from the next instruction), loaded at 0x35430.
    const SSL_READ: &[u8] = &[
        0x48, 0x83, 0xec, 0x18, // sub rsp, 0x18
        0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, // mov rax, fs:0x28
        0x48, 0x89, 0x44, 0x24, 0x08, // mov [rsp+8], rax
        0x31, 0xc0, // xor eax, eax
        0x85, 0xd2, // test edx, edx
        0x78, 0x2f, // js error
        0x48, 0x89, 0xe1, // mov rcx, rsp
        0x48, 0x63, 0xd2, // movsxd rdx, edx
        0xe8, 0x3d, 0xfe, 0xff, 0xff, // call ssl_read_internal
        0x85, 0xc0, // test eax, eax
    ];

    /// `code`, then `call` to itself + 5.
    fn calling(code: &[u8]) -> Vec<u8> {
        let mut c = code.to_vec();
        c.extend_from_slice(&[0xe8, 0, 0, 0, 0]);
        c
    }

    #[test]
    fn finds_the_internal_call_past_the_length_check() {
        assert_eq!(first_call(SSL_READ, 0x35430, Form::Plain), Ok(0x35290));
        // SSL_read_ex: sub rsp, 8; call.
        let ex = [0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff];
        assert_eq!(first_call(&ex, 0x354c0, Form::Ex), Ok(0x35290));
        // lea rcx, [rsp+8] is a count on the stack too; mov edx, edx widens.
        let lea = calling(&[0x48, 0x8d, 0x4c, 0x24, 0x08, 0x89, 0xd2]);
        assert_eq!(first_call(&lea, 0, Form::Plain), Ok(lea.len() as u64));
    }

    #[test]
    fn refuses_prologues_it_cannot_vouch_for() {
        use Prologue::*;
        let plain = |code: &[u8]| first_call(&calling(code), 0, Form::Plain);
        let ex = |code: &[u8]| first_call(&calling(code), 0, Form::Ex);
        // mov rcx, rsp: the plain form's count pointer, and nothing else.
        const COUNT: [u8; 3] = [0x48, 0x89, 0xe1];
        assert!(plain(&COUNT).is_ok());
        // mov rsi, rdx before the call: the buffer is not the caller's.
        assert_eq!(
            plain(&[0x48, 0x89, 0xd6, 0x48, 0x89, 0xe1]),
            Err(ArgumentsMoved)
        );
        // No count pointer set up: not the four-argument internal call.
        assert_eq!(plain(&[]), Err(ArgumentsMoved));
        // OpenSSL 3.2's write: xor ecx, ecx (flags); mov r8, rsp (written).
        let five = [0x31, 0xc9, 0x49, 0x89, 0xe0];
        assert_eq!(plain(&five), Err(ArgumentsMoved));
        assert_eq!(ex(&five), Err(ArgumentsMoved));
        let mut with_count = COUNT.to_vec();
        with_count.extend_from_slice(&[0x49, 0x89, 0xe0]);
        assert_eq!(plain(&with_count), Err(ArgumentsMoved));
        // The _ex form touches none of its four: not even its count.
        assert_eq!(ex(&COUNT), Err(ArgumentsMoved));
        assert_eq!(ex(&[0x48, 0x63, 0xd2]), Err(ArgumentsMoved));
        // The plain form may widen num, not compute it.
        let mut add = COUNT.to_vec();
        add.extend_from_slice(&[0x48, 0x83, 0xc2, 0x01]);
        assert_eq!(plain(&add), Err(ArgumentsMoved));
        // Compares read their operands: test edx, edx; cmp rdi, 0.
        let mut cmp = COUNT.to_vec();
        cmp.extend_from_slice(&[0x85, 0xd2, 0x48, 0x83, 0xff, 0x00]);
        assert!(plain(&cmp).is_ok());
        // A tail jump, a return, an indirect call: no call to follow.
        assert_eq!(first_call(&[0xe9, 0, 0, 0, 0], 0, Form::Ex), Err(NoCall));
        assert_eq!(first_call(&[0xc3], 0, Form::Ex), Err(NoCall));
        assert_eq!(first_call(&[0xff, 0xd0], 0, Form::Ex), Err(NoCall));
        // rep stosb writes through RDI without naming it: not plain.
        assert_eq!(ex(&[0xf3, 0xaa]), Err(NoCall));
        assert_eq!(first_call(&[], 0, Form::Ex), Err(NoCall));
        // Too long a walk before any call.
        assert_eq!(ex(&[0x90; MAX_PROLOGUE + 1]), Err(NoCall));
    }

    #[test]
    fn an_entry_is_emulated_at_a_push_even_after_endbr64() {
        // push r13 (ssl_read_internal's first instruction), push rbx.
        assert_eq!(emulated_entry(&[0x41, 0x55, 0x41, 0x54]), Some(0));
        assert_eq!(emulated_entry(&[0x53]), Some(0));
        assert_eq!(emulated_entry(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), Some(4));
        // sub rsp, 0x18; endbr64 then sub; push of a constant.
        assert_eq!(emulated_entry(&SSL_READ[..4]), None);
        assert_eq!(
            emulated_entry(&[0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x18]),
            None
        );
        assert_eq!(emulated_entry(&[0x6a, 0x01]), None);
        assert_eq!(emulated_entry(&[]), None);
    }

    #[test]
    fn finds_the_internals_of_this_machines_openssl() {
        // The library the TLS tests trace; the figures it is probed for
        // come from it (see the module's doc).
        let path = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let data = std::fs::read(path).expect("libssl3 is installed by cargo xtask setup");
        let obj = object::File::parse(&*data).unwrap();
        let found = internals(&obj).unwrap();
        // What the kernel will probe: the file's bytes at each offset.
        for at in [found.read.unwrap(), found.write.unwrap()] {
            assert_eq!(emulated_entry(&data[at as usize..]), Some(0));
        }
    }
}
