//! systemd's notify protocol (`Type=notify`): `READY=1` once the socket listens, `STOPPING=1` on
//! SIGTERM, and `WATCHDOG=1` every half `WATCHDOG_USEC` while the inference thread shows signs
//! of life. One datagram per message on `NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace); nothing happens when the variable is unset.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends `msg` to systemd; `false` when not run by systemd or the send failed.
pub fn notify(msg: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(msg.as_bytes(), &addr))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    sent.is_ok()
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set for this process.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog every `period` as long as the inference thread's heartbeat (milliseconds
/// since `epoch`) is younger than two periods; a stuck thread stops the pings and systemd
/// restarts the service.
pub async fn watchdog(period: Duration, epoch: Instant, heartbeat: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = epoch.elapsed().as_millis() as u64;
        let age = now.saturating_sub(heartbeat.load(Ordering::Relaxed));
        if u128::from(age) < 2 * period.as_millis() {
            notify("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_writes_one_datagram() {
        let dir = std::env::temp_dir().join(format!("edgellm-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1"));
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
