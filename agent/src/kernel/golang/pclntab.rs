//! Go's function table (`.gopclntab`): where each function starts and
//! ends, by name. Go's runtime needs it for stack traces and the garbage
//! collector, so it survives `-ldflags='-s -w'`, which strips the symbol
//! table.
//!
//! Layout since Go 1.18 (magic `0xfffffff0`; `0xfffffff1` since 1.20 with
//! the same header): magic, two zero bytes, the instruction quantum, the
//! pointer size, then eight pointer-sized words: `nfunc`, `nfiles`,
//! `textStart`, and the offsets of the function-name table, the
//! compilation-unit table, the file table, the pc tables and the function
//! table. The function table holds `nfunc` pairs (entry offset from the
//! start of the text, offset of the function's record), then the end of
//! the last function. A record starts with its entry offset and the offset
//! of its name. Go 1.26 stopped filling `textStart` in (0): the text start
//! is then `runtime.text`, which the caller finds.

const MAGICS: [u32; 2] = [0xffff_fff0, 0xffff_fff1];
const HEADER: usize = 8 + 8 * 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("its function table is not one of Go 1.18 or later")]
    Format,
    #[error("its function table is cut short")]
    Truncated,
}

pub struct Pclntab<'a> {
    data: &'a [u8],
    nfunc: usize,
    text_start: u64,
    names: usize,
    functab: usize,
}

impl<'a> Pclntab<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, Error> {
        let magic = u32_at(data, 0).ok_or(Error::Truncated)?;
        if !MAGICS.contains(&magic) || data.get(7) != Some(&8) || data.len() < HEADER {
            return Err(Error::Format);
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).ok_or(Error::Truncated);
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| Error::Truncated);
        let t = Pclntab {
            data,
            nfunc: to_usize(word(0)?)?,
            text_start: word(2)?,
            names: to_usize(word(3)?)?,
            functab: to_usize(word(7)?)?,
        };
        // The table and its end marker must be there.
        let end = t
            .nfunc
            .checked_mul(8)
            .and_then(|n| n.checked_add(t.functab)?.checked_add(4))
            .ok_or(Error::Truncated)?;
        if end > data.len() {
            return Err(Error::Truncated);
        }
        Ok(t)
    }

    /// The address of the text the entry offsets count from, or 0 when
    /// the table does not record it (Go 1.26 and later).
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// The function `name`: its entry and end, as offsets from the text
    /// start.
    pub fn find(&self, name: &str) -> Option<(u64, u64)> {
        (0..self.nfunc).find_map(|i| {
            let at = self.functab + 8 * i;
            let entry = u32_at(self.data, at)?;
            let record = self
                .functab
                .checked_add(u32_at(self.data, at + 4)? as usize)?;
            let name_off = i32_at(self.data, record + 4)?;
            let start = self.names.checked_add(usize::try_from(name_off).ok()?)?;
            let rest = self.data.get(start..)?;
            let len = rest.iter().position(|&b| b == 0)?;
            if &rest[..len] != name.as_bytes() {
                return None;
            }
            let end = u32_at(self.data, at + 8)?;
            (end > entry).then_some((u64::from(entry), u64::from(end)))
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    u32_at(b, at).map(|v| v as i32)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of the given functions, laid out as Go 1.20+ does.
    fn table(text_start: u64, funcs: &[(&str, u32)], end: u32) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (name, _) in funcs {
            name_offs.push(names.len() as i32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let names_at = HEADER;
        let functab_at = names_at + names.len();
        let records_at = 8 * funcs.len() + 4;
        let mut out = vec![0; HEADER];
        out[..4].copy_from_slice(&MAGICS[1].to_le_bytes());
        out[6] = 1;
        out[7] = 8;
        let words = [
            funcs.len() as u64,
            0,
            text_start,
            names_at as u64,
            0,
            0,
            0,
            functab_at as u64,
        ];
        for (i, w) in words.iter().enumerate() {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&names);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            out.extend_from_slice(&entry.to_le_bytes());
            out.extend_from_slice(&((records_at + 8 * i) as u32).to_le_bytes());
        }
        out.extend_from_slice(&end.to_le_bytes());
        for (i, (_, entry)) in funcs.iter().enumerate() {
            out.extend_from_slice(&entry.to_le_bytes());
            out.extend_from_slice(&name_offs[i].to_le_bytes());
        }
        out
    }

    #[test]
    fn a_function_table_offset_near_the_top_of_memory_is_refused() {
        // Found by the go_binary fuzz target: the end check overflowed.
        let mut t = table(0x40_1000, &[("main.main", 0)], 0x10);
        t[8 + 8 * 7..16 + 8 * 7].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(matches!(Pclntab::parse(&t), Err(Error::Truncated)));
    }

    #[test]
    fn finds_functions_and_their_ends() {
        let t = table(
            0x40_1000,
            &[("main.main", 0), ("crypto/tls.(*Conn).Read", 0x100)],
            0x180,
        );
        let p = Pclntab::parse(&t).unwrap();
        assert_eq!(p.text_start(), 0x40_1000);
        assert_eq!(p.find("main.main"), Some((0, 0x100)));
        assert_eq!(p.find("crypto/tls.(*Conn).Read"), Some((0x100, 0x180)));
        assert_eq!(p.find("crypto/tls.(*Conn).Write"), None);
        assert_eq!(p.find("main.mai"), None);
    }

    #[test]
    fn cut_or_foreign_tables_are_refused_never_a_panic() {
        let t = table(0, &[("a", 0), ("b", 8)], 16);
        for cut in 0..t.len() {
            if let Ok(p) = Pclntab::parse(&t[..cut]) {
                // A cut inside the records: lookups fail, quietly.
                let _ = p.find("a");
                let _ = p.find("b");
            }
        }
        let mut old = t.clone();
        old[..4].copy_from_slice(&0xffff_fffbu32.to_le_bytes());
        assert_eq!(Pclntab::parse(&old).err(), Some(Error::Format));
        // Garbage offsets in the records.
        let mut bad = t;
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&i32::MAX.to_le_bytes());
        let p = Pclntab::parse(&bad).unwrap();
        assert_eq!(p.find("b"), None);
    }
}
