//! Just enough of the ELF format (64-bit, little-endian) to check a board binary: the machine
//! from the file header, and the GLIBC symbol versions it needs from `.gnu.version_r`.

use anyhow::{bail, Context, Result};

/// `e_machine` of 64-bit Arm.
pub const EM_AARCH64: u16 = 183;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    let s = b.get(off..off + 2).context("ELF file truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).context("ELF file truncated")?;
    Ok(u32::from_le_bytes(s.try_into()?))
}
fn u64_at(b: &[u8], off: usize) -> Result<u64> {
    let s = b.get(off..off + 8).context("ELF file truncated")?;
    Ok(u64::from_le_bytes(s.try_into()?))
}
fn cstr_at(b: &[u8], off: usize) -> Result<&str> {
    let rest = b.get(off..).context("ELF string offset out of range")?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .context("unterminated ELF string")?;
    Ok(std::str::from_utf8(&rest[..end])?)
}

/// What the checks need from a binary.
#[derive(Debug, PartialEq, Eq)]
pub struct ElfInfo {
    pub machine: u16,
    /// Every `GLIBC_x.y` (or `x.y.z`, reduced to x.y) version needed, sorted, without repeats.
    pub glibc: Vec<(u32, u32)>,
}

impl ElfInfo {
    /// The highest GLIBC version needed (a static binary needs none).
    pub fn max_glibc(&self) -> Option<(u32, u32)> {
        self.glibc.last().copied()
    }
}

/// Parses `GLIBC_2.34` into (2, 34).
pub fn parse_glibc(name: &str) -> Option<(u32, u32)> {
    let v = name.strip_prefix("GLIBC_")?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// Reads the machine and the needed GLIBC versions of a 64-bit little-endian ELF file.
pub fn inspect(b: &[u8]) -> Result<ElfInfo> {
    if b.get(..4) != Some(b"\x7fELF".as_slice()) {
        bail!("not an ELF file");
    }
    if b[4] != 2 || b[5] != 1 {
        bail!(
            "not a 64-bit little-endian ELF file (class {}, data {})",
            b[4],
            b[5]
        );
    }
    let machine = u16_at(b, 18)?;
    let shoff = u64_at(b, 0x28)? as usize;
    let shentsize = u16_at(b, 0x3a)? as usize;
    let shnum = u16_at(b, 0x3c)? as usize;
    let section = |i: usize| shoff + i * shentsize;
    let mut glibc = Vec::new();
    for i in 0..shnum {
        let sh = section(i);
        if u32_at(b, sh + 4)? != SHT_GNU_VERNEED {
            continue;
        }
        let off = u64_at(b, sh + 0x18)? as usize;
        let link = u32_at(b, sh + 0x28)? as usize;
        let count = u32_at(b, sh + 0x2c)? as usize; // sh_info: number of Verneed entries
        let strtab = u64_at(b, section(link) + 0x18)? as usize;
        let mut vn = off;
        for _ in 0..count {
            // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32.
            let cnt = u16_at(b, vn + 2)? as usize;
            let mut aux = vn + u32_at(b, vn + 8)? as usize;
            for _ in 0..cnt {
                // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32.
                let name = cstr_at(b, strtab + u32_at(b, aux + 8)? as usize)?;
                if let Some(v) = parse_glibc(name) {
                    glibc.push(v);
                }
                let next = u32_at(b, aux + 12)? as usize;
                if next == 0 {
                    break;
                }
                aux += next;
            }
            let next = u32_at(b, vn + 12)? as usize;
            if next == 0 {
                break;
            }
            vn += next;
        }
    }
    glibc.sort_unstable();
    glibc.dedup();
    Ok(ElfInfo { machine, glibc })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_names_parse() {
        assert_eq!(parse_glibc("GLIBC_2.34"), Some((2, 34)));
        assert_eq!(parse_glibc("GLIBC_2.2.5"), Some((2, 2)));
        assert_eq!(parse_glibc("GLIBC_PRIVATE"), None);
        assert_eq!(parse_glibc("GCC_3.0"), None);
    }

    #[test]
    fn reads_the_running_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let info = inspect(&std::fs::read(exe).unwrap()).unwrap();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(info.machine, EM_X86_64);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(info.machine, EM_AARCH64);
        // A dynamically linked Rust test binary needs glibc 2.x.
        let max = info.max_glibc().expect("the test binary links glibc");
        assert_eq!(max.0, 2);
        assert!(info.glibc.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn refuses_non_elf() {
        assert!(inspect(b"#!/bin/sh\n").is_err());
    }
}
