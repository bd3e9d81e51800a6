//! Where to probe a Go function: the branch of its stack check, and each
//! `RET` in its code.
//!
//! Return probes on Go must be uprobes on these instructions. A uretprobe
//! replaces the return address on the goroutine's stack, and Go copies
//! stacks to grow them: the replaced address would send the goroutine into
//! the kernel's trampoline on another stack, and crash it.
//!
//! The entry probe goes on the conditional branch of the stack check (a
//! `jbe`, right after its compare) rather than on the first instruction: the
//! kernel emulates a branch, where the compare it must single-step out of
//! line, a second trap (a second VM exit on a virtual machine) on every
//! call. Only the flags differ there from the function's entry (and R12,
//! which a large frame's check uses), and the branch runs on every call,
//! whichever way it goes.

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind, Register};

/// Where to probe one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Points {
    /// Where the entry probe goes: the stack check's branch, else the
    /// first instruction.
    pub entry: u64,
    pub returns: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("its code does not start with Go's stack check through R14 (not the register ABI)")]
    NotRegisterAbi,
    #[error("its code does not decode as x86-64")]
    Undecodable,
    #[error("its code has no RET")]
    NoReturn,
}

/// Where to probe the amd64 function whose code is `code`, loaded at `ip`.
/// The function must begin as Go's register ABI compiles it: a stack check
/// against the goroutine (`g`, always in R14), so that the probes may read
/// `g` from R14 at entry and at every `RET`.
pub fn points(code: &[u8], ip: u64) -> Result<Points, Error> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut checked_stack = false;
    let mut entry = ip;
    let mut index = 0;
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            // Past the last RET, the bytes up to the next function are
            // padding; an undecodable byte before it is not Go code.
            if out.is_empty() {
                return Err(Error::Undecodable);
            }
            break;
        }
        if checked_stack && entry == ip && index <= 2 && insn.mnemonic() == Mnemonic::Jbe {
            entry = insn.ip();
        }
        if index < 2
            && insn.mnemonic() == Mnemonic::Cmp
            && (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory)
            && insn.memory_base() == Register::R14
        {
            checked_stack = true;
        }
        if index == 2 && !checked_stack {
            return Err(Error::NotRegisterAbi);
        }
        if matches!(insn.code(), Code::Retnq | Code::Retnq_imm16) {
            out.push(insn.ip());
        }
        index += 1;
    }
    if !checked_stack {
        return Err(Error::NotRegisterAbi);
    }
    if out.is_empty() {
        return Err(Error::NoReturn);
    }
    Ok(Points {
        entry,
        returns: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // cmp rsp, [r14+0x10]; jbe +N; push rbp; mov rbp, rsp; ... ret
    const PROLOGUE: &[u8] = &[0x49, 0x3b, 0x66, 0x10, 0x76, 0x10, 0x55, 0x48, 0x89, 0xe5];
    const POP_RET: &[u8] = &[0x5d, 0xc3];

    #[test]
    fn finds_every_ret_and_nothing_else() {
        let mut code = PROLOGUE.to_vec();
        code.extend_from_slice(POP_RET); // ret at 0x100b
                                         // mov eax, 0xc3c3c3c3: c3 bytes inside an instruction are no RET.
        code.extend_from_slice(&[0xb8, 0xc3, 0xc3, 0xc3, 0xc3]);
        code.extend_from_slice(POP_RET); // ret at 0x1012
        code.extend_from_slice(&[0xcc, 0xcc, 0xcc]);
        let p = points(&code, 0x1000).unwrap();
        assert_eq!(p.returns, vec![0x100b, 0x1012]);
        // The entry probe goes on the stack check's `jbe`.
        assert_eq!(p.entry, 0x1004);
    }

    #[test]
    fn a_large_frame_checks_through_r12_first() {
        // lea r12, [rsp-0x1000]; cmp r12, [r14+0x10]; ...; ret
        let mut code = vec![0x4c, 0x8d, 0xa4, 0x24, 0x00, 0xf0, 0xff, 0xff];
        code.extend_from_slice(&[0x4d, 0x3b, 0x66, 0x10]);
        code.extend_from_slice(POP_RET);
        // No branch after the check here: the entry probe stays at the start.
        assert_eq!(
            points(&code, 0),
            Ok(Points {
                entry: 0,
                returns: vec![13]
            })
        );
        // With its jbe (0f 86, near): on the branch.
        let mut code = vec![0x4c, 0x8d, 0xa4, 0x24, 0x00, 0xf0, 0xff, 0xff];
        code.extend_from_slice(&[0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0, 0, 0]);
        code.extend_from_slice(POP_RET);
        assert_eq!(points(&code, 0).map(|p| p.entry), Ok(12));
    }

    #[test]
    fn code_without_the_go_stack_check_is_refused() {
        // push rbp; mov rbp, rsp; pop rbp; ret: C, or Go's old stack ABI.
        let code = [0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3];
        assert_eq!(points(&code, 0), Err(Error::NotRegisterAbi));
        assert_eq!(points(PROLOGUE, 0), Err(Error::NoReturn));
        assert_eq!(points(&[0x06], 0), Err(Error::Undecodable));
        assert_eq!(points(&[], 0), Err(Error::NotRegisterAbi));
    }
}
