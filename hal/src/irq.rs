//! Device interrupts that the kernel delivers to given cores: every such interrupt stops an
//! inference thread in the middle of a token, so a real-time setup keeps them on the system
//! cores (`irqaffinity=` on the kernel command line, or `/proc/irq/N/smp_affinity_list`).

use crate::cpu::parse_cpu_list;

/// One device interrupt line as `/proc/interrupts` and `/proc/irq/N/` describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIrq {
    /// The interrupt number.
    pub irq: u32,
    /// Its count so far, summed over CPUs.
    pub count: u64,
    /// The device or driver name: the last field of its `/proc/interrupts` line.
    pub name: String,
}

/// The numbered (device) lines of `/proc/interrupts`: the per-CPU counts summed, and the name
/// (the line's last field). Architecture lines (`LOC:`, `NMI:`, `IPI0:`...) are skipped, and so
/// are lines that do not parse.
pub fn parse_interrupts(text: &str) -> Vec<DeviceIrq> {
    let mut lines = text.lines();
    let cpus = lines.next().map_or(0, |h| h.split_whitespace().count());
    lines
        .filter_map(|line| {
            let (num, rest) = line.trim_start().split_once(':')?;
            let irq = num.parse().ok()?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let counts = fields.get(..cpus)?;
            let count = counts
                .iter()
                .try_fold(0u64, |a, c| Some(a + c.parse::<u64>().ok()?))?;
            let name = fields.get(cpus..).and_then(|f| f.last())?.to_string();
            Some(DeviceIrq { irq, count, name })
        })
        .collect()
}

/// The device interrupts that have fired since boot and may be delivered to one of `cores`
/// (their `effective_affinity_list`, or `smp_affinity_list` where the kernel has no effective
/// one). Unreadable entries are skipped; `None` when `/proc/interrupts` cannot be read.
pub fn device_irqs_on(cores: &[usize]) -> Option<Vec<DeviceIrq>> {
    let text = std::fs::read_to_string("/proc/interrupts").ok()?;
    let affinity = |irq: u32| {
        ["effective_affinity_list", "smp_affinity_list"]
            .iter()
            .find_map(|f| std::fs::read_to_string(format!("/proc/irq/{irq}/{f}")).ok())
            .and_then(|s| parse_cpu_list(&s))
    };
    Some(
        parse_interrupts(&text)
            .into_iter()
            .filter(|d| d.count > 0)
            .filter(|d| affinity(d.irq).is_some_and(|cpus| cpus.iter().any(|c| cores.contains(c))))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupts_table_is_parsed() {
        let text = "           CPU0       CPU1       \n\
             \x20 1:          9          0   IO-APIC   1-edge      i8042\n\
             \x2036:          0    1759607 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n\
             \x20 9:         0          0   IO-APIC   9-fasteoi   acpi\n\
             NMI:          0          0   Non-maskable interrupts\n\
             LOC:    9798184   11858889   Local timer interrupts\n\
             \x2042:    oops\n\
             ERR:          0\n";
        let irqs = parse_interrupts(text);
        assert_eq!(
            irqs,
            vec![
                DeviceIrq {
                    irq: 1,
                    count: 9,
                    name: "i8042".into()
                },
                DeviceIrq {
                    irq: 36,
                    count: 1_759_607,
                    name: "virtio1-req.0".into()
                },
                DeviceIrq {
                    irq: 9,
                    count: 0,
                    name: "acpi".into()
                },
            ]
        );
        // A Raspberry Pi 4's GIC lines, four CPUs.
        let pi = "           CPU0       CPU1       CPU2       CPU3\n\
             \x2025:          1          0          0          0     GICv2  99 Level     timer\n\
             \x2040:     205143          0          0          0     GICv2  65 Level     fe00b880.mailbox\n";
        let irqs = parse_interrupts(pi);
        assert_eq!(irqs.len(), 2);
        assert_eq!((irqs[1].irq, irqs[1].count), (40, 205_143));
        assert_eq!(irqs[1].name, "fe00b880.mailbox");
        assert!(parse_interrupts("").is_empty());
    }

    #[test]
    fn interrupts_on_this_machine_are_read() {
        // Every device interrupt that fired can be delivered to some CPU: asking for all of
        // them returns exactly the fired lines whose affinity is readable.
        let all: Vec<usize> = (0..4096).collect();
        let Some(on_any) = device_irqs_on(&all) else {
            return; // no /proc/interrupts here
        };
        assert!(on_any.iter().all(|d| d.count > 0));
        assert_eq!(device_irqs_on(&[]), Some(Vec::new()));
    }
}
