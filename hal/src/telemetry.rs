//! Board telemetry from sysfs: SoC temperature and CPU clocks, read without allocating.

use core::fmt::Write as _;
use std::fs::File;
use std::io::Read;

use crate::{HalError, Telemetry};

/// [`Telemetry`] from `/sys/class/thermal` and `/sys/devices/system/cpu/cpu*/cpufreq`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxTelemetry {
    /// Which `thermal_zone` to read (0 is the SoC on Raspberry Pi and Jetson boards).
    pub thermal_zone: usize,
}

/// A small stack string for sysfs paths.
struct StackPath {
    buf: [u8; 96],
    len: usize,
}

impl core::fmt::Write for StackPath {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Reads a sysfs file holding one integer. A missing file is `Ok(None)`.
fn read_int(args: core::fmt::Arguments<'_>, what: &'static str) -> Result<Option<i64>, HalError> {
    let mut path = StackPath {
        buf: [0; 96],
        len: 0,
    };
    path.write_fmt(args).map_err(|_| HalError::Parse { what })?;
    let path = core::str::from_utf8(&path.buf[..path.len]).map_err(|_| HalError::Parse { what })?;
    // Paths this short are turned into C strings on the stack by std: no allocation.
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(HalError::Os {
                what,
                errno: e.raw_os_error().unwrap_or(0),
            })
        }
    };
    let mut buf = [0u8; 32];
    let n = file.read(&mut buf).map_err(|e| HalError::Os {
        what,
        errno: e.raw_os_error().unwrap_or(0),
    })?;
    let text = core::str::from_utf8(&buf[..n]).map_err(|_| HalError::Parse { what })?;
    text.trim()
        .parse::<i64>()
        .map(Some)
        .map_err(|_| HalError::Parse { what })
}

impl Telemetry for LinuxTelemetry {
    fn temperature_millicelsius(&self) -> Result<Option<i32>, HalError> {
        let v = read_int(
            format_args!("/sys/class/thermal/thermal_zone{}/temp", self.thermal_zone),
            "thermal zone temperature",
        )?;
        Ok(v.and_then(|v| i32::try_from(v).ok()))
    }

    fn cpu_frequency_khz(&self, cpu: usize) -> Result<Option<u32>, HalError> {
        let v = read_int(
            format_args!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"),
            "CPU frequency",
        )?;
        Ok(v.and_then(|v| u32::try_from(v).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_or_reports_absent() {
        let t = LinuxTelemetry::default();
        // Virtual machines often have neither file: both answers are fine, errors are not.
        let _ = t.temperature_millicelsius().unwrap();
        let _ = t.cpu_frequency_khz(0).unwrap();
        assert_eq!(t.cpu_frequency_khz(1 << 30).unwrap(), None);
    }
}
