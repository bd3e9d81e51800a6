//! Field offsets in kernel structs, from the kernel's own BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The probes are built without CO-RE relocations, so where a kernel
//! struct keeps a field is found here and handed to them as a load-time
//! constant. Only what the probes read is looked up: `task_struct`'s
//! `thread.fsbase`, the base of a thread's TLS (where Go keeps the running
//! goroutine).
//!
//! Pure: bytes in, offsets out. The format is the kernel's
//! `Documentation/bpf/btf.rst`: a header, then type records, then strings.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not BTF (no magic)")]
    NotBtf,
    #[error("BTF cut short")]
    Short,
    #[error("BTF type kind {0} is unknown")]
    UnknownKind(u32),
    #[error("struct {0} not found")]
    NoStruct(String),
    #[error("{0} has no field {1}")]
    NoField(String, String),
}

/// One member of a struct or union: its name's offset in the strings, its
/// type, and where it starts, in bits.
#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    ty: u32,
    bits: u32,
}

#[derive(Clone, Debug)]
enum Type {
    /// A struct or union: its members.
    Composite(Vec<Member>),
    /// A typedef or qualifier: the type it names.
    Alias(u32),
    Other,
}

/// The struct and union types of a BTF blob, enough to find fields.
pub struct Btf {
    /// By id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Named structs, by name.
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, Error> {
    let bytes = b.get(at..at + 4).ok_or(Error::Short)?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

impl Btf {
    /// Parses a little-endian BTF blob (what x86_64 kernels expose).
    pub fn parse(b: &[u8]) -> Result<Btf, Error> {
        let magic = b.get(0..2).ok_or(Error::Short)?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err(Error::NotBtf);
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(Error::Short)?;
            b.get(start..start.checked_add(len).ok_or(Error::Short)?)
                .ok_or(Error::Short)
        };
        let types_bytes = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut btf = Btf {
            types: vec![Type::Other],
            strings,
            structs: HashMap::new(),
        };
        let mut at = 0;
        while at < types_bytes.len() {
            let name = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let size_or_type = u32_at(types_bytes, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let offset = u32_at(types_bytes, at + 8)?;
                        members.push(Member {
                            name: u32_at(types_bytes, at)?,
                            ty: u32_at(types_bytes, at + 4)?,
                            // With kind_flag, the top byte is a bitfield's size.
                            bits: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                        at += 12;
                    }
                    if kind == KIND_STRUCT && name != 0 {
                        let id = btf.types.len() as u32;
                        let n = btf.string(name).to_owned();
                        btf.structs.entry(n).or_insert(id);
                    }
                    Type::Composite(members)
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                _ => {
                    at += extra_bytes(kind, vlen)?;
                    Type::Other
                }
            };
            btf.types.push(ty);
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// The struct or union a type id names, through typedefs and
    /// qualifiers.
    fn composite(&self, mut id: u32) -> Option<&[Member]> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Composite(members) => return Some(members),
                Type::Alias(to) => id = *to,
                Type::Other => return None,
            }
        }
        None
    }

    /// Where `field` is in struct (or union) `id`, in bytes, looking into
    /// anonymous members too (at most `depth` deep: a blob whose types
    /// refer to themselves must not recurse forever); with its type.
    fn field(&self, id: u32, field: &str, depth: u32) -> Option<(u64, u32)> {
        for m in self.composite(id)? {
            let at = u64::from(m.bits / 8);
            if m.name == 0 {
                if depth == 0 {
                    continue;
                }
                if let Some((inner, ty)) = self.field(m.ty, field, depth - 1) {
                    return Some((at + inner, ty));
                }
            } else if self.string(m.name) == field {
                return Some((at, m.ty));
            }
        }
        None
    }

    /// Where a dotted path of fields (`thread.fsbase`) is in struct
    /// `name`, in bytes.
    pub fn offset_of(&self, name: &str, path: &str) -> Result<u64, Error> {
        let mut id = *self
            .structs
            .get(name)
            .ok_or_else(|| Error::NoStruct(name.to_owned()))?;
        let mut offset = 0;
        for part in path.split('.') {
            let (at, ty) = self
                .field(id, part, 8)
                .ok_or_else(|| Error::NoField(name.to_owned(), path.to_owned()))?;
            offset += at;
            id = ty;
        }
        Ok(offset)
    }
}

/// Bytes that follow a type record of `kind` other than a struct or union.
fn extra_bytes(kind: u32, vlen: usize) -> Result<usize, Error> {
    Ok(match kind {
        // void-like records: PTR, FWD, FUNC, FLOAT; and the aliases.
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // INT: its encoding; VAR: its linkage; DECL_TAG: its component.
        1 | 14 | 17 => 4,
        // ARRAY
        3 => 12,
        // ENUM and FUNC_PROTO: 8 bytes per entry.
        6 | 13 => 8 * vlen,
        // DATASEC and ENUM64: 12 bytes per entry.
        15 | 19 => 12 * vlen,
        k => return Err(Error::UnknownKind(k)),
    })
}

/// Where this kernel keeps a task's fs base (`task_struct.thread.fsbase`).
pub fn task_fsbase() -> Result<u64, anyhow::Error> {
    let raw = std::fs::read("/sys/kernel/btf/vmlinux")?;
    Ok(Btf::parse(&raw)?.offset_of("task_struct", "thread.fsbase")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: types as (name, info, size_or_type, extra words), then
    /// the strings.
    fn blob(types: &[(u32, u32, u32, Vec<u32>)], strings: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for (name, info, size, extra) in types {
            for w in [*name, *info, *size].iter().chain(extra) {
                t.extend_from_slice(&w.to_le_bytes());
            }
        }
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [24, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    const STRUCT: u32 = KIND_STRUCT << 24;

    // Strings: 0 "", 1 "int", 5 "task_struct", 17 "thread", 24
    // "thread_struct", 38 "fsbase", 45 "pid", 49 "t".
    const STRINGS: &[u8] = b"\0int\0task_struct\0thread\0thread_struct\0fsbase\0pid\0t\0";

    #[test]
    fn finds_a_nested_field_through_an_anonymous_member_and_a_typedef() {
        let b = blob(
            &[
                // 1: int
                (1, 1 << 24, 4, vec![32]),
                // 2: struct thread_struct { int pid; int fsbase @ 64 bits }
                (24, STRUCT | 2, 16, vec![45, 1, 0, 38, 1, 64]),
                // 3: typedef t = thread_struct
                (49, KIND_TYPEDEF << 24, 2, vec![]),
                // 4: an anonymous struct { t thread @ 32 bits }
                (0, STRUCT | 1, 24, vec![17, 3, 32]),
                // 5: struct task_struct { int pid; <anon> @ 64 bits }
                (5, STRUCT | 2, 40, vec![45, 1, 0, 0, 4, 64]),
            ],
            STRINGS,
        );
        let btf = Btf::parse(&b).unwrap();
        // 8 (the anonymous member) + 4 (thread) + 8 (fsbase).
        assert_eq!(btf.offset_of("task_struct", "thread.fsbase"), Ok(20));
        assert_eq!(btf.offset_of("task_struct", "pid"), Ok(0));
        assert_eq!(
            btf.offset_of("task_struct", "thread.gsbase"),
            Err(Error::NoField("task_struct".into(), "thread.gsbase".into()))
        );
        assert_eq!(
            btf.offset_of("mm_struct", "pid"),
            Err(Error::NoStruct("mm_struct".into()))
        );
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        let good = blob(&[(24, STRUCT | 1, 8, vec![38, 0, 0])], STRINGS);
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        assert_eq!(Btf::parse(b"\0\0").err(), Some(Error::NotBtf));
        let unknown = blob(&[(0, 31 << 24, 0, vec![])], STRINGS);
        assert_eq!(Btf::parse(&unknown).err(), Some(Error::UnknownKind(31)));
    }

    #[test]
    fn this_kernel_keeps_the_fs_base_in_the_task() {
        // x86_64's thread_struct holds fsbase; the offset lies inside the
        // task (its size is in the thousands).
        let at = task_fsbase().expect("this kernel has BTF");
        assert!((1000..20_000).contains(&at), "{at}");
    }
}
