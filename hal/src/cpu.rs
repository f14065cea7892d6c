//! What CPU this is: online CPUs, model or core name, and the features the kernels choose between.
//!
//! The parsing works on strings (the text of `/proc/cpuinfo` and `/sys/devices/system/cpu/*`) so that
//! it is tested with sample text from each supported board on any machine.

use std::fs;

use crate::{CpuFeatures, HalError};

/// Arm core names by `CPU part` (implementer 0x41, Arm Ltd.).
const ARM_PARTS: &[(u16, &str)] = &[
    (0xd03, "Cortex-A53"),
    (0xd04, "Cortex-A35"),
    (0xd05, "Cortex-A55"),
    (0xd07, "Cortex-A57"),
    (0xd08, "Cortex-A72"),
    (0xd09, "Cortex-A73"),
    (0xd0a, "Cortex-A75"),
    (0xd0b, "Cortex-A76"),
    (0xd0c, "Neoverse-N1"),
    (0xd0d, "Cortex-A77"),
    (0xd41, "Cortex-A78"),
    (0xd42, "Cortex-A78AE"),
    (0xd40, "Neoverse-V1"),
    (0xd49, "Neoverse-N2"),
];

/// The Arm core name of a `CPU part` number, if known.
pub fn arm_core_name(part: u16) -> Option<&'static str> {
    ARM_PARTS.iter().find(|(p, _)| *p == part).map(|(_, n)| *n)
}

/// What [`CpuInfo::detect`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// CPUs online (`sysconf(_SC_NPROCESSORS_ONLN)`).
    pub online_cpus: usize,
    /// CPUs this process may run on (its affinity mask), in increasing order.
    pub allowed_cpus: Vec<usize>,
    /// x86 `model name`, or the Arm core name from `CPU part` (e.g. "Cortex-A76"), or empty.
    pub model_name: String,
    /// aarch64 `CPU implementer` (0x41 is Arm Ltd.).
    pub implementer: Option<u8>,
    /// aarch64 `CPU part` of the first CPU listed.
    pub cpu_part: Option<u16>,
    /// The board, from the `Model` line some Arm kernels add (e.g. "Raspberry Pi 5 Model B Rev 1.0").
    pub board_model: Option<String>,
    /// Features relevant to the kernels.
    pub features: CpuFeatures,
}

impl CpuInfo {
    /// Reads `/proc/cpuinfo`, the online count and the affinity mask. On x86_64 and aarch64 the
    /// features come from the standard library's run-time detection (which also checks that the
    /// OS saves the wider registers), `/proc/cpuinfo` flags elsewhere.
    pub fn detect() -> Result<CpuInfo, HalError> {
        let text = fs::read_to_string("/proc/cpuinfo").map_err(|e| HalError::Os {
            what: "reading /proc/cpuinfo",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let mut info = parse_cpuinfo(&text);
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        info.online_cpus = if online > 0 {
            online as usize
        } else {
            fs::read_to_string("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|s| parse_cpu_list(&s))
                .map_or(1, |l| l.len().max(1))
        };
        info.allowed_cpus = allowed_cpus()?;
        if let Some(f) = runtime_features() {
            info.features = f;
        }
        Ok(info)
    }

    /// A one-line description for the start-up log.
    pub fn summary(&self) -> String {
        let f = &self.features;
        let mut names: Vec<&str> = Vec::new();
        for (on, name) in [
            (f.avx2, "avx2"),
            (f.fma, "fma"),
            (f.f16c, "f16c"),
            (f.avx512f, "avx512f"),
            (f.avx512vnni, "avx512vnni"),
            (f.avxvnni, "avxvnni"),
            (f.neon, "neon"),
            (f.dotprod, "dotprod"),
            (f.i8mm, "i8mm"),
            (f.fp16, "fp16"),
        ] {
            if on {
                names.push(name);
            }
        }
        format!(
            "{} x {}{}; features: {}",
            self.online_cpus,
            if self.model_name.is_empty() {
                "unknown CPU"
            } else {
                &self.model_name
            },
            self.board_model
                .as_deref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(" ")
            }
        )
    }
}

/// The key and value of a `key : value` line of `/proc/cpuinfo`, trimmed.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once(':')?;
    Some((k.trim(), v.trim()))
}

fn parse_hex_or_dec(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses the text of `/proc/cpuinfo` (x86 or aarch64). `online_cpus` is the number of
/// `processor` entries; `allowed_cpus` is left empty. Features come from the first CPU's `flags`
/// (x86) or `Features` (aarch64) line.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut processors = 0usize;
    let mut seen_flags = false;
    for line in text.lines() {
        let Some((key, value)) = key_value(line) else {
            continue;
        };
        match key {
            "processor" => processors += 1,
            "model name" if info.model_name.is_empty() => info.model_name = value.to_string(),
            "CPU implementer" if info.implementer.is_none() => {
                info.implementer = parse_hex_or_dec(value).and_then(|v| u8::try_from(v).ok());
            }
            "CPU part" if info.cpu_part.is_none() => {
                info.cpu_part = parse_hex_or_dec(value).and_then(|v| u16::try_from(v).ok());
            }
            "Model" if info.board_model.is_none() => info.board_model = Some(value.to_string()),
            "flags" | "Features" if !seen_flags => {
                seen_flags = true;
                info.features = parse_feature_flags(value);
            }
            _ => {}
        }
    }
    info.online_cpus = processors;
    if info.model_name.is_empty() && info.implementer == Some(0x41) {
        if let Some(name) = info.cpu_part.and_then(arm_core_name) {
            info.model_name = name.to_string();
        }
    }
    info
}

/// Maps a `flags` (x86) or `Features` (aarch64) value to [`CpuFeatures`].
pub fn parse_feature_flags(flags: &str) -> CpuFeatures {
    let mut f = CpuFeatures::default();
    let mut fphp = false;
    let mut asimdhp = false;
    for flag in flags.split_ascii_whitespace() {
        match flag {
            "avx2" => f.avx2 = true,
            "fma" => f.fma = true,
            "f16c" => f.f16c = true,
            "avx512f" => f.avx512f = true,
            "avx512_vnni" | "avx512vnni" => f.avx512vnni = true,
            "avx_vnni" => f.avxvnni = true,
            "asimd" => f.neon = true,
            "asimddp" => f.dotprod = true,
            "i8mm" => f.i8mm = true,
            "fphp" => fphp = true,
            "asimdhp" => asimdhp = true,
            _ => {}
        }
    }
    f.fp16 = fphp && asimdhp;
    f
}

/// Parses a kernel CPU list such as `0-3,6,8-9` into the CPU numbers, in the order given.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Some(cpus);
    }
    for part in text.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The CPUs this process may run on (`sched_getaffinity`).
pub fn allowed_cpus() -> Result<Vec<usize>, HalError> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid, writable cpu_set_t of `size` bytes; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    if rc != 0 {
        return Err(HalError::Os {
            what: "sched_getaffinity",
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    // SAFETY: every index is below the number of bits in a cpu_set_t.
    Ok((0..8 * size)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Features from the standard library's run-time detection, where it exists for this arch.
#[cfg(target_arch = "x86_64")]
fn runtime_features() -> Option<CpuFeatures> {
    use std::arch::is_x86_feature_detected as has;
    Some(CpuFeatures {
        avx2: has!("avx2"),
        fma: has!("fma"),
        f16c: has!("f16c"),
        avx512f: has!("avx512f"),
        avx512vnni: has!("avx512vnni"),
        avxvnni: has!("avxvnni"),
        ..CpuFeatures::default()
    })
}

/// Features from the standard library's run-time detection, where it exists for this arch.
#[cfg(target_arch = "aarch64")]
fn runtime_features() -> Option<CpuFeatures> {
    use std::arch::is_aarch64_feature_detected as has;
    Some(CpuFeatures {
        neon: has!("neon"),
        dotprod: has!("dotprod"),
        i8mm: has!("i8mm"),
        fp16: has!("fp16"),
        ..CpuFeatures::default()
    })
}

/// Features from the standard library's run-time detection, where it exists for this arch.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn runtime_features() -> Option<CpuFeatures> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_EPYC: &str = "\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
stepping\t: 1
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch topoext perfctr_core invpcid_single ssbd ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero xsaveerptr rdpru wbnoinvd arat avx512vbmi pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid flush_l1d
bogomips\t: 5199.99

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse avx2
";

    const PI5: &str = "\
processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

processor\t: 2
CPU part\t: 0xd0b

processor\t: 3
CPU part\t: 0xd0b

Revision\t: d04170
Serial\t\t: 1c8e2a8a1b2c3d4e
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
";

    const PI4: &str = "\
processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
";

    #[test]
    fn x86_epyc() {
        let info = parse_cpuinfo(X86_EPYC);
        assert_eq!(info.online_cpus, 2);
        assert_eq!(info.model_name, "AMD EPYC 9R14 96-Core Processor");
        assert_eq!(info.cpu_part, None);
        assert_eq!(info.board_model, None);
        let f = info.features;
        assert!(f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512vnni);
        assert!(!f.avxvnni && !f.neon && !f.dotprod && !f.i8mm && !f.fp16);
    }

    #[test]
    fn raspberry_pi_5() {
        let info = parse_cpuinfo(PI5);
        assert_eq!(info.online_cpus, 4);
        assert_eq!(info.implementer, Some(0x41));
        assert_eq!(info.cpu_part, Some(0xd0b));
        assert_eq!(info.model_name, "Cortex-A76");
        assert_eq!(
            info.board_model.as_deref(),
            Some("Raspberry Pi 5 Model B Rev 1.0")
        );
        let f = info.features;
        assert!(f.neon && f.dotprod && f.fp16);
        assert!(!f.i8mm && !f.avx2);
    }

    #[test]
    fn raspberry_pi_4() {
        let info = parse_cpuinfo(PI4);
        assert_eq!(info.model_name, "Cortex-A72");
        let f = info.features;
        assert!(f.neon && !f.dotprod && !f.fp16 && !f.i8mm);
    }

    #[test]
    fn part_names() {
        assert_eq!(arm_core_name(0xd03), Some("Cortex-A53"));
        assert_eq!(arm_core_name(0xd08), Some("Cortex-A72"));
        assert_eq!(arm_core_name(0xd0b), Some("Cortex-A76"));
        assert_eq!(arm_core_name(0xd07), Some("Cortex-A57"));
        assert_eq!(arm_core_name(0xd42), Some("Cortex-A78AE"));
        assert_eq!(arm_core_name(0xd0c), Some("Neoverse-N1"));
        assert_eq!(arm_core_name(0x123), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3\n"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("0,2-3,7"), Some(vec![0, 2, 3, 7]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn detect_here() {
        let info = CpuInfo::detect().unwrap();
        assert!(info.online_cpus >= 1);
        assert!(!info.allowed_cpus.is_empty());
        assert!(!info.summary().is_empty());
        #[cfg(target_arch = "aarch64")]
        assert!(info.features.neon);
    }
}
