//! `cargo xtask image` on synthetic Raspberry Pi OS images built here without root (sfdisk on a
//! file, mkfs.vfat + mcopy for the boot partition, mke2fs -d for the root): every injected file,
//! the enable link, the system user and cmdline.txt are read back, e2fsck -fn must be clean, the
//! root partition grows for a model that does not fit, and malformed bases are refused with no
//! output left behind.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOOLS: &[&str] = &[
    "sfdisk",
    "mkfs.vfat",
    "mcopy",
    "mtype",
    "debugfs",
    "mke2fs",
    "e2fsck",
    "resize2fs",
];
const APT: &str = "fdisk dosfstools mtools e2fsprogs";

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True when the image tools are installed; otherwise fails under EDGELLM_REQUIRE_DATA=1 (CI) and
/// says what is skipped elsewhere.
fn tools_present() -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| find(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "image tests need {}: sudo apt-get install {APT}",
        missing.join(", ")
    );
    if std::env::var("EDGELLM_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    println!("skipped: {msg}");
    false
}

fn tool(name: &str) -> Command {
    Command::new(find(name).unwrap_or_else(|| PathBuf::from(name)))
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgellm-image-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

const CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootfstype=ext4 fsck.repair=yes rootwait quiet";
const BOOT_SECTORS: u64 = 32768; // 16 MiB
const BOOT_START: u64 = 2048;
const ROOT_START: u64 = BOOT_START + BOOT_SECTORS;

/// Partition types and what to put on partition 2.
struct Shape {
    boot_type: &'static str,
    root_type: &'static str,
    root_fs: bool,
    root_mib: u64,
}

const PI_OS: Shape = Shape {
    boot_type: "c",
    root_type: "83",
    root_fs: true,
    root_mib: 32,
};

/// A two-partition image shaped like Raspberry Pi OS Bookworm: FAT32 `bootfs` with cmdline.txt and
/// config.txt, ext4 `rootfs` with a merged /usr, /etc/systemd/system and the account files.
fn base_image(dir: &Path, shape: &Shape) -> PathBuf {
    let img = dir.join("base.img");
    let root_sectors = shape.root_mib * 2048;
    let f = fs::File::create(&img).unwrap();
    f.set_len((ROOT_START + root_sectors) * 512).unwrap();
    drop(f);
    let table = format!(
        "label: dos\nlabel-id: 0x1234abcd\nstart={BOOT_START}, size={BOOT_SECTORS}, type={}\nstart={ROOT_START}, size={root_sectors}, type={}\n",
        shape.boot_type, shape.root_type
    );
    let mut sfdisk = tool("sfdisk");
    sfdisk
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(table.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Boot: FAT (FAT16 at this size; Raspberry Pi OS has 512 MiB of FAT32), written at its offset.
    let fat = dir.join("boot.fat");
    ok(tool("mkfs.vfat")
        .args(["-n", "BOOTFS", "-C"])
        .arg(&fat)
        .arg((BOOT_SECTORS / 2).to_string()));
    fs::write(dir.join("cmdline.txt"), format!("{CMDLINE}\n")).unwrap();
    fs::write(dir.join("config.txt"), "arm_64bit=1\ndtparam=audio=on\n").unwrap();
    ok(tool("mcopy")
        .arg("-i")
        .arg(&fat)
        .arg(dir.join("cmdline.txt"))
        .arg(dir.join("config.txt"))
        .arg("::"));
    let bytes = fs::read(&fat).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(BOOT_START * 512)).unwrap();
    f.write_all(&bytes).unwrap();
    drop(f);
    fs::remove_file(&fat).unwrap();

    if shape.root_fs {
        let root = dir.join("rootfs");
        for d in [
            "etc/systemd/system/multi-user.target.wants",
            "usr/lib/systemd/system",
            "usr/bin",
            "usr/sbin",
            "var/lib",
            "home/pi",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/systemd/system/ssh.service",
            root.join("etc/systemd/system/multi-user.target.wants/ssh.service"),
        )
        .unwrap();
        fs::write(
            root.join("usr/lib/systemd/system/ssh.service"),
            "[Service]\nExecStart=/usr/sbin/sshd -D\n",
        )
        .unwrap();
        for (name, text, mode) in [
            ("passwd", "root:x:0:0:root:/root:/bin/bash\n_apt:x:100:65534::/nonexistent:/usr/sbin/nologin\nsystemd-network:x:101:102::/:/usr/sbin/nologin\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n", 0o644),
            ("group", "root:x:0:\nshadow:x:42:\nsystemd-journal:x:100:\nsystemd-network:x:102:\npi:x:1000:\n", 0o644),
            ("shadow", "root:*:19500:0:99999:7:::\n_apt:*:19500:0:99999:7:::\nsystemd-network:!*:19500::::::\npi:$y$j9T$x:19500:0:99999:7:::\n", 0o640),
            ("gshadow", "root:*::\nshadow:*::\nsystemd-journal:!*::\nsystemd-network:!*::\npi:!::\n", 0o640),
            ("hostname", "raspberrypi\n", 0o644),
        ] {
            let p = root.join("etc").join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        ok(tool("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "rootfs", "-d"])
            .arg(&root)
            .arg("-E")
            .arg(format!("offset={}", ROOT_START * 512))
            .arg(&img)
            .arg(format!("{}k", root_sectors / 2)));
        // /etc/shadow belongs to group shadow, as on Debian.
        let spec = format!("{}?offset={}", img.display(), ROOT_START * 512);
        ok(tool("debugfs")
            .args(["-w", "-R", "sif /etc/shadow gid 42"])
            .arg(&spec));
        fs::remove_dir_all(&root).unwrap();
    }
    img
}

/// A stand-in for the board binary: a 64-bit little-endian aarch64 ELF header with no sections
/// (what `--binary` checks); the image test is about where it lands, not what it runs.
fn fake_binary(dir: &Path) -> PathBuf {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1;
    h[16] = 2; // ET_EXEC
    h[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    h[20] = 1;
    h[0x34] = 64;
    let p = dir.join("edgellm");
    fs::write(&p, &h).unwrap();
    p
}

fn xtask(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args).env("RUST_BACKTRACE", "0");
    for (flag, p) in paths {
        cmd.arg(flag).arg(p);
    }
    cmd.output().unwrap()
}

struct Image {
    spec: String,
    fat: String,
}

impl Image {
    fn new(img: &Path) -> Self {
        Image {
            spec: format!("{}?offset={}", img.display(), ROOT_START * 512),
            fat: format!("{}@@{}", img.display(), BOOT_START * 512),
        }
    }
    fn debugfs(&self, req: &str) -> String {
        let out = ok(tool("debugfs").arg("-R").arg(req).arg(&self.spec));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().all(|l| l.starts_with("debugfs ")),
            "debugfs {req}: {err}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// The bytes of a file in the root file system.
    fn read(&self, path: &str, dir: &Path) -> Vec<u8> {
        let host = dir.join("readback");
        let _ = fs::remove_file(&host);
        self.debugfs(&format!("dump {path} {}", host.display()));
        fs::read(&host).unwrap_or_else(|_| panic!("{path} is not in the image"))
    }
    fn text(&self, path: &str, dir: &Path) -> String {
        String::from_utf8(self.read(path, dir)).unwrap()
    }
    /// (type, mode, uid, gid) from debugfs stat.
    fn stat(&self, path: &str) -> (String, u32, u32, u32) {
        let s = self.debugfs(&format!("stat {path}"));
        let after = |k: &str| {
            s.split(k)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("{path}: no {k} in {s}"))
                .to_string()
        };
        (
            after("Type:"),
            u32::from_str_radix(&after("Mode:"), 8).unwrap(),
            after("User:").parse().unwrap(),
            after("Group:").parse().unwrap(),
        )
    }
    fn cmdline(&self) -> String {
        let out = ok(tool("mtype")
            .args(["-i", &self.fat, "::cmdline.txt"])
            .env("MTOOLS_SKIP_CHECK", "1"));
        String::from_utf8(out.stdout).unwrap()
    }
    fn e2fsck_clean(&self) -> String {
        let out = ok(tool("e2fsck").arg("-fn").arg(&self.spec));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The size in sectors of partition 2, read with sfdisk.
fn root_sectors(img: &Path) -> u64 {
    let out = ok(tool("sfdisk").arg("--json").arg(img));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["partitiontable"]["partitions"][1]["size"]
        .as_u64()
        .unwrap()
}

/// Only the base and what the test put there: no output, no temporary files.
fn assert_nothing_written(dir: &Path, out: &Path) {
    assert!(!out.exists(), "{} was left behind", out.display());
    let extra: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out.img"))
        .collect();
    assert!(extra.is_empty(), "left behind: {extra:?}");
}

#[test]
fn image_installs_the_service_into_a_raspberry_pi_os_image() {
    if !tools_present() {
        return;
    }
    let dir = scratch("install");
    let base = base_image(&dir, &PI_OS);
    let base_bytes = fs::read(&base).unwrap();
    let exe = fake_binary(&dir);
    // A 40 MiB "model" does not fit in the 32 MiB root: the partition must grow.
    let model = dir.join("tiny-test.gguf");
    let model_bytes: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    fs::write(&model, &model_bytes).unwrap();
    let out = dir.join("out.img");
    let run = xtask(
        &["image", "--board", "pi5"],
        &[
            ("--base", &base),
            ("--binary", &exe),
            ("--model", &model),
            ("-o", &out),
        ],
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{stdout}");
    assert!(stdout.contains("growing partition 2"), "{stdout}");
    assert_eq!(
        fs::read(&base).unwrap(),
        base_bytes,
        "the base image was modified"
    );

    let img = Image::new(&out);
    assert!(root_sectors(&out) > PI_OS.root_mib * 2048);
    assert_eq!(
        fs::metadata(&out).unwrap().len(),
        (ROOT_START + root_sectors(&out)) * 512
    );
    // The files, their modes and owners.
    assert_eq!(img.read("/usr/bin/edgellm", &dir), fs::read(&exe).unwrap());
    assert_eq!(
        img.stat("/usr/bin/edgellm"),
        ("regular".into(), 0o755, 0, 0)
    );
    let config = img.text("/etc/edgellm/edgellm.toml", &dir);
    assert!(config.contains("board = \"pi5\"\n"), "{config}");
    assert!(
        config.contains("model = \"/usr/share/edgellm/models/tiny-test.gguf\"\n"),
        "{config}"
    );
    assert_eq!(
        img.stat("/etc/edgellm/edgellm.toml"),
        ("regular".into(), 0o644, 0, 0)
    );
    assert_eq!(img.stat("/etc/edgellm"), ("directory".into(), 0o755, 0, 0));
    // /lib is a link to usr/lib (merged /usr): the unit lands in /usr/lib/systemd/system.
    let unit = img.text("/usr/lib/systemd/system/edgellm.service", &dir);
    assert!(
        unit.contains("\nExecStart=/usr/bin/edgellm serve --config /etc/edgellm/edgellm.toml\n")
    );
    assert!(unit.contains("\nUser=edgellm\n") && unit.contains("\nWantedBy=multi-user.target\n"));
    assert_eq!(img.stat("/lib/systemd/system/edgellm.service").1, 0o644);
    assert_eq!(
        img.read("/usr/share/edgellm/models/tiny-test.gguf", &dir),
        model_bytes
    );
    assert!(img
        .text("/usr/share/doc/edgellm/copyright", &dir)
        .contains("Apache-2.0"));
    assert!(!img
        .read("/usr/share/doc/edgellm/changelog.gz", &dir)
        .is_empty());
    // Enabled like `systemctl enable`, next to what was there.
    let link = img.debugfs("stat /etc/systemd/system/multi-user.target.wants/edgellm.service");
    assert!(link.contains("Type: symlink"), "{link}");
    assert!(
        link.contains("link dest: \"/lib/systemd/system/edgellm.service\""),
        "{link}"
    );
    assert!(img
        .debugfs("ls /etc/systemd/system/multi-user.target.wants")
        .contains("ssh.service"));
    // The system user: lowest free id in 100..999 for both user and group (101 and 102 are taken).
    let passwd = img.text("/etc/passwd", &dir);
    assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/bash\n"));
    assert!(
        passwd
            .ends_with("\nedgellm:x:103:103:EdgeLLM service:/var/lib/edgellm:/usr/sbin/nologin\n"),
        "{passwd}"
    );
    assert!(img
        .text("/etc/group", &dir)
        .ends_with("\npi:x:1000:\nedgellm:x:103:\n"));
    let shadow = img.text("/etc/shadow", &dir);
    assert!(shadow.starts_with("root:*:19500:"));
    assert!(
        shadow.lines().last().unwrap().starts_with("edgellm:!*:"),
        "{shadow}"
    );
    assert_eq!(img.stat("/etc/shadow"), ("regular".into(), 0o640, 0, 42));
    assert!(img.text("/etc/gshadow", &dir).ends_with("\nedgellm:!::\n"));
    assert_eq!(img.stat("/etc/passwd"), ("regular".into(), 0o644, 0, 0));
    // cmdline.txt: one line, the Pi 5's inference cores isolated, interrupts on its system cores.
    assert_eq!(
        img.cmdline(),
        format!("{CMDLINE} isolcpus=2,3 irqaffinity=0,1\n")
    );
    assert!(img.e2fsck_clean().contains("rootfs: "));

    // Again, on its own output and without a model: nothing is duplicated, nothing grows.
    let again = dir.join("again.img");
    let run = xtask(
        &["image", "--board", "pi-zero-2w"],
        &[("--base", &out), ("--binary", &exe), ("-o", &again)],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let img2 = Image::new(&again);
    assert_eq!(
        img2.cmdline(),
        format!("{CMDLINE} isolcpus=2,3 irqaffinity=0,1\n")
    );
    assert_eq!(img2.text("/etc/passwd", &dir), passwd);
    let config = img2.text("/etc/edgellm/edgellm.toml", &dir);
    assert!(config.contains("board = \"pi-zero-2w\"") && config.contains("# model = "));
    assert_eq!(root_sectors(&again), root_sectors(&out));
    img2.e2fsck_clean();
    fs::remove_dir_all(&dir).unwrap();
}

/// Runs the image command on `base` and returns its error text, checking nothing was written.
fn refused(dir: &Path, base: &Path) -> String {
    let exe = fake_binary(dir);
    let out = dir.join("out.img");
    let run = xtask(
        &["image", "--board", "pi4"],
        &[("--base", base), ("--binary", &exe), ("-o", &out)],
    );
    assert!(!run.status.success(), "a malformed base was accepted");
    assert_nothing_written(dir, &out);
    String::from_utf8_lossy(&run.stderr).into_owned()
}

#[test]
fn malformed_bases_are_refused_with_the_reason() {
    if !tools_present() {
        return;
    }
    let dir = scratch("malformed");
    let blank = dir.join("blank.img");
    fs::write(&blank, vec![0u8; 4 << 20]).unwrap();
    let e = refused(&dir, &blank);
    assert!(e.contains("no MBR partition table"), "{e}");

    let tiny = dir.join("tiny.img");
    fs::write(&tiny, b"not a disk").unwrap();
    let e = refused(&dir, &tiny);
    assert!(e.contains("too small"), "{e}");

    let base = base_image(
        &dir,
        &Shape {
            boot_type: "83",
            ..PI_OS
        },
    );
    let e = refused(&dir, &base);
    assert!(e.contains("partition 1 has type 0x83, not FAT"), "{e}");

    let base = base_image(
        &dir,
        &Shape {
            root_type: "7",
            ..PI_OS
        },
    );
    let e = refused(&dir, &base);
    assert!(
        e.contains("partition 2 has type 0x07, not Linux (0x83)"),
        "{e}"
    );

    let base = base_image(
        &dir,
        &Shape {
            root_fs: false,
            ..PI_OS
        },
    );
    let e = refused(&dir, &base);
    assert!(e.contains("partition 2 has no ext4 file system"), "{e}");

    // A download cut short: the root partition runs past the end of the file.
    let base = base_image(&dir, &PI_OS);
    let f = fs::OpenOptions::new().write(true).open(&base).unwrap();
    f.set_len(ROOT_START * 512 + (8 << 20)).unwrap();
    drop(f);
    let e = refused(&dir, &base);
    assert!(
        e.contains("partition 2 ends at sector") && e.contains("truncated"),
        "{e}"
    );

    // Not a Pi board.
    let base = base_image(&dir, &PI_OS);
    let out = dir.join("out.img");
    let run = xtask(
        &["image", "--board", "jetson-orin"],
        &[("--base", &base), ("-o", &out)],
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("Raspberry Pi OS SD-card images"));
    assert_nothing_written(&dir, &out);
    fs::remove_dir_all(&dir).unwrap();
}
