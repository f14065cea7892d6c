//! `cargo xtask image --board <pi> --base raspios.img -o out.img`: a Raspberry Pi OS SD-card image
//! with EdgeLLM installed, made without root privileges. The partition table is read here (MBR,
//! as Raspberry Pi OS ships it); the ext4 root is written with e2fsprogs' `debugfs -w` and the FAT
//! boot partition with mtools, both on the image file at the partition's byte offset.
//!
//! What goes in: the package tree of [`crate::package::stage`] (binary, config, unit, docs and the
//! model when given), the `multi-user.target.wants` link that `systemctl enable` would make, the
//! `edgellm` system user, and `isolcpus=` for the board's inference cores (`irqaffinity=` for its
//! system cores) on `cmdline.txt`'s one line. The root partition and its file system grow when the
//! files do not fit, and `e2fsck -fn` must find the result clean. The output is written to a temporary file beside `-o` and renamed
//! only when everything succeeded.
//!
//! The user is written into the image's `/etc/passwd`, `/etc/group`, `/etc/shadow` and
//! `/etc/gshadow` directly (the package's postinst cannot run). A `sysusers.d` entry would leave
//! it to `systemd-sysusers.service` at boot, but that unit only runs when `/etc` needs an update
//! (`ConditionNeedsUpdate=/etc`), which an image that has booted once, or whose build left
//! `/etc/.updated` behind, does not: the service would then fail on `User=edgellm`.

use crate::build;
use crate::unit;
use anyhow::{bail, ensure, Context, Result};
use edgellm_board::Board;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const SECTOR: u64 = 512;
/// MBR partition types of FAT file systems (FAT12, FAT16, FAT16B, FAT32 CHS/LBA, FAT16 LBA).
const FAT_TYPES: &[u8] = &[0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e];
/// MBR partition type of a Linux file system.
const LINUX: u8 = 0x83;
/// Debian's range of system user and group ids (adduser's FIRST_SYSTEM_UID..LAST_SYSTEM_UID).
const SYSTEM_IDS: std::ops::RangeInclusive<u32> = 100..=999;

/// The Debian packages with the tools this command runs.
pub const APT_PACKAGES: &str = "e2fsprogs mtools";

/// One primary MBR partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1 to 4.
    pub number: usize,
    pub kind: u8,
    pub start: u64,
    pub sectors: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.start * SECTOR
    }
    pub fn end(&self) -> u64 {
        self.start + self.sectors
    }
}

/// The boot and root partitions of a Raspberry Pi OS image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub boot: Partition,
    pub root: Partition,
    /// Every used primary partition.
    pub all: [Option<Partition>; 4],
}

/// Reads and checks the MBR of an image of `len` bytes: partition 1 FAT, partition 2 Linux, both
/// inside the file and not overlapping. `head` is the image's first sector (or less, when the file
/// is shorter).
pub fn parse_mbr(head: &[u8], len: u64) -> Result<Layout> {
    if len < SECTOR || head.len() < SECTOR as usize {
        bail!("the file is too small to be a disk image ({len} bytes; an MBR alone is 512)");
    }
    if head[510..512] != [0x55, 0xaa] {
        bail!("no MBR partition table (no 0x55AA boot signature at byte 510): not a disk image");
    }
    let mut all = [None; 4];
    for (i, slot) in all.iter_mut().enumerate() {
        let e = &head[446 + 16 * i..446 + 16 * (i + 1)];
        let kind = e[4];
        let start = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
        let sectors = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]]));
        if kind == 0xee {
            bail!("the image has a GPT partition table (protective MBR); Raspberry Pi OS images use MBR");
        }
        if kind == 0 || sectors == 0 {
            continue;
        }
        if e[0] & 0x7f != 0 {
            bail!(
                "partition {}: invalid status byte 0x{:02x}: not an MBR partition table",
                i + 1,
                e[0]
            );
        }
        if start == 0 {
            bail!(
                "partition {} starts at sector 0, over the partition table",
                i + 1
            );
        }
        *slot = Some(Partition {
            number: i + 1,
            kind,
            start,
            sectors,
        });
    }
    let total = len / SECTOR;
    for p in all.iter().flatten() {
        if p.end() > total {
            bail!(
                "partition {} ends at sector {} but the image has only {total} sectors \
                 ({len} bytes): truncated or not the whole disk",
                p.number,
                p.end()
            );
        }
    }
    let used: Vec<Partition> = all.iter().flatten().copied().collect();
    for (i, a) in used.iter().enumerate() {
        for b in &used[i + 1..] {
            if a.start < b.end() && b.start < a.end() {
                bail!("partitions {} and {} overlap", a.number, b.number);
            }
        }
    }
    let boot = all[0].context("partition 1 (the FAT boot partition) is missing")?;
    let root = all[1].context("partition 2 (the ext4 root partition) is missing")?;
    if !FAT_TYPES.contains(&boot.kind) {
        bail!(
            "partition 1 has type 0x{:02x}, not FAT (0x0c, as Raspberry Pi OS has): not a Raspberry Pi OS image",
            boot.kind
        );
    }
    if root.kind != LINUX {
        bail!(
            "partition 2 has type 0x{:02x}, not Linux (0x83): not a Raspberry Pi OS image",
            root.kind
        );
    }
    Ok(Layout { boot, root, all })
}

/// Reads `n` bytes at `offset` of `file`.
fn read_at(file: &mut fs::File, offset: u64, n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0; n];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// Reads the partition table of the image at `path` and checks that the partitions hold what their
/// types say: a FAT boot sector on 1, an ext2/3/4 superblock on 2.
pub fn read_layout(path: &Path) -> Result<Layout> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut head = Vec::new();
    (&mut f).take(SECTOR).read_to_end(&mut head)?;
    let layout = parse_mbr(&head, len)?;
    let boot = read_at(&mut f, layout.boot.offset(), SECTOR as usize)?;
    let bps = u16::from_le_bytes([boot[11], boot[12]]);
    if boot[510..512] != [0x55, 0xaa] || ![512, 1024, 2048, 4096].contains(&bps) {
        bail!("partition 1 has no FAT file system (no valid boot sector)");
    }
    let sb = read_at(&mut f, layout.root.offset() + 1024, 1024)?;
    if sb[56..58] != [0x53, 0xef] {
        bail!("partition 2 has no ext4 file system (no ext2/3/4 superblock magic)");
    }
    Ok(layout)
}

/// Where a tool lives: on PATH, or in /usr/sbin and /sbin (e2fsprogs, which a user's PATH may
/// lack).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

struct Tools {
    debugfs: PathBuf,
    e2fsck: PathBuf,
    resize2fs: PathBuf,
    mtype: PathBuf,
    mcopy: PathBuf,
}

fn tools() -> Result<Tools> {
    let get = |name: &str| {
        find_tool(name).with_context(|| {
            format!("`{name}` is not installed: sudo apt-get install {APT_PACKAGES}")
        })
    };
    Ok(Tools {
        debugfs: get("debugfs")?,
        e2fsck: get("e2fsck")?,
        resize2fs: get("resize2fs")?,
        mtype: get("mtype")?,
        mcopy: get("mcopy")?,
    })
}

/// Runs a tool, returning (status, stdout, stderr).
fn output(cmd: &mut Command) -> Result<(std::process::ExitStatus, String, String)> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs a tool that must succeed; returns its stdout.
fn checked(cmd: &mut Command) -> Result<String> {
    let (status, stdout, stderr) = output(cmd)?;
    if !status.success() {
        bail!("{cmd:?} failed ({status}): {stderr}{stdout}");
    }
    Ok(stdout)
}

/// `cmdline.txt` with `isolcpus=` set to the board's inference cores (no other task is scheduled
/// there) and `irqaffinity=` to its system cores (device interrupts are delivered there, not to
/// an inference core in the middle of a token), on one line: earlier values of both are replaced,
/// every other parameter kept in order. The firmware reads only the first line, so a file with
/// more than one non-empty line is refused.
pub fn edit_cmdline(text: &str, inference: &[usize], system: &[usize]) -> Result<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(!lines.is_empty(), "cmdline.txt is empty");
    ensure!(
        lines.len() == 1,
        "cmdline.txt has {} lines; the firmware reads only the first: join them and try again",
        lines.len()
    );
    let list = |cores: &[usize]| {
        let cpus: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
        cpus.join(",")
    };
    let mut params: Vec<String> = lines[0]
        .split_whitespace()
        .filter(|p| !p.starts_with("isolcpus=") && !p.starts_with("irqaffinity="))
        .map(str::to_string)
        .collect();
    params.push(format!("isolcpus={}", list(inference)));
    if !system.is_empty() {
        params.push(format!("irqaffinity={}", list(system)));
    }
    Ok(format!("{}\n", params.join(" ")))
}

/// Adds the system user `name` (with its own group) to the contents of passwd, group, shadow and
/// gshadow, with the lowest id free in Debian's system range for both user and group. Returns
/// `None` when the user exists already.
pub fn add_user(
    passwd: &str,
    group: &str,
    shadow: Option<&str>,
    gshadow: Option<&str>,
    name: &str,
    home: &str,
    days: u64,
) -> Result<Option<[Option<String>; 4]>> {
    let field = |line: &str, i: usize| line.split(':').nth(i).map(str::to_string);
    if passwd.lines().any(|l| field(l, 0).as_deref() == Some(name)) {
        return Ok(None);
    }
    ensure!(
        !group.lines().any(|l| field(l, 0).as_deref() == Some(name)),
        "the image has a group {name} but no user {name}"
    );
    let ids = |text: &str, i: usize| -> Vec<u32> {
        text.lines()
            .filter_map(|l| field(l, i)?.parse().ok())
            .collect()
    };
    let (uids, gids) = (ids(passwd, 2), ids(group, 2));
    let id = SYSTEM_IDS
        .clone()
        .find(|i| !uids.contains(i) && !gids.contains(i))
        .context("no free system user id (100 to 999) in the image")?;
    let append = |text: &str, line: String| {
        let mut t = text.to_string();
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        t.push_str(&line);
        t.push('\n');
        t
    };
    Ok(Some([
        Some(append(
            passwd,
            format!("{name}:x:{id}:{id}:EdgeLLM service:{home}:/usr/sbin/nologin"),
        )),
        Some(append(group, format!("{name}:x:{id}:"))),
        shadow.map(|s| append(s, format!("{name}:!*:{days}::::::"))),
        gshadow.map(|s| append(s, format!("{name}:!::"))),
    ]))
}

/// An ext4 file system at a byte offset of an image file, driven through `debugfs`.
struct Ext4<'a> {
    tools: &'a Tools,
    /// `image?offset=N`, as e2fsprogs' I/O layer takes it.
    spec: String,
}

/// What a path is in the file system.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Missing,
    Dir,
    File,
    Symlink,
    Other,
}

/// A path quoted for a debugfs command line.
fn q(p: &str) -> String {
    format!("\"{p}\"")
}

impl Ext4<'_> {
    fn debugfs(&self, request: &str) -> Result<(String, String)> {
        let (status, stdout, stderr) = output(
            Command::new(&self.tools.debugfs)
                .arg("-R")
                .arg(request)
                .arg(&self.spec),
        )?;
        ensure!(status.success(), "debugfs -R {request:?} failed: {stderr}");
        Ok((stdout, stderr))
    }

    /// What `path` is (intermediate symlinks followed, the last one not).
    fn kind(&self, path: &str) -> Result<Kind> {
        let (out, err) = self.debugfs(&format!("stat {}", q(path)))?;
        if err.contains("File not found") {
            return Ok(Kind::Missing);
        }
        let ty = out
            .lines()
            .find_map(|l| l.split("Type: ").nth(1))
            .and_then(|t| t.split_whitespace().next())
            .with_context(|| format!("debugfs stat {path}: {err}{out}"))?;
        Ok(match ty {
            "directory" => Kind::Dir,
            "regular" => Kind::File,
            "symlink" => Kind::Symlink,
            _ => Kind::Other,
        })
    }

    /// Mode, uid and gid of `path`.
    fn owner(&self, path: &str) -> Result<(u32, u32, u32)> {
        let (out, err) = self.debugfs(&format!("stat {}", q(path)))?;
        let after = |key: &str| {
            out.split(key)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
                .with_context(|| format!("debugfs stat {path}: no {key} in {err}{out}"))
        };
        let mode = u32::from_str_radix(&after("Mode:")?, 8)?;
        Ok((mode, after("User:")?.parse()?, after("Group:")?.parse()?))
    }

    fn cat(&self, path: &str) -> Result<String> {
        let (out, err) = self.debugfs(&format!("cat {}", q(path)))?;
        ensure!(
            !err.lines().any(|l| !l.starts_with("debugfs ")),
            "cannot read {path} from the image: {err}"
        );
        Ok(out)
    }

    /// Runs a debugfs script with `-w`; any message on stderr (but the version banner) is an
    /// error, since the script only does what was checked to be possible.
    fn script(&self, cmds: &[String], scratch: &Path) -> Result<()> {
        if cmds.is_empty() {
            return Ok(());
        }
        let file = scratch.join("debugfs.cmds");
        fs::write(&file, cmds.join("\n") + "\n")?;
        let (status, _, err) = output(
            Command::new(&self.tools.debugfs)
                .arg("-w")
                .arg("-f")
                .arg(&file)
                .arg(&self.spec),
        )?;
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .collect();
        ensure!(
            status.success() && errors.is_empty(),
            "writing the root file system failed: {}",
            errors.join("; ")
        );
        Ok(())
    }

    /// (block size, free blocks beyond the reserve, block count).
    fn space(&self) -> Result<(u64, u64, u64)> {
        let (out, err) = self.debugfs("stats")?;
        let get = |key: &str| -> Result<u64> {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("debugfs stats: no {key:?}: {err}"))
        };
        let bs = get("Block size:")?;
        let free = get("Free blocks:")?;
        let reserved = get("Reserved block count:")?;
        Ok((bs, free.saturating_sub(reserved), get("Block count:")?))
    }
}

/// Every file and directory under `root`, as absolute paths on the board, parents first.
fn tree(root: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, bool)>) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let board_path = format!(
                "/{}",
                path.strip_prefix(root)?
                    .to_string_lossy()
                    .trim_start_matches('/')
            );
            let is_dir = e.file_type()?.is_dir();
            out.push((board_path, path.clone(), is_dir));
            if is_dir {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// Blocks of `bs` bytes that the files under `root` take, with one per directory and one extent
/// block per 128 MiB of a file.
fn blocks_needed(root: &Path, bs: u64) -> Result<u64> {
    let mut blocks = 0;
    for (_, path, is_dir) in tree(root)? {
        let len = fs::metadata(&path)?.len();
        blocks += if is_dir {
            1
        } else {
            len.div_ceil(bs) + len / (128 << 20) + 1
        };
    }
    Ok(blocks)
}

/// Removes the temporary output (and scratch directory) unless the image was completed.
struct Pending {
    paths: Vec<PathBuf>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        for p in &self.paths {
            if p.is_dir() {
                let _ = fs::remove_dir_all(p);
            } else {
                let _ = fs::remove_file(p);
            }
        }
    }
}

/// Grows the root partition (the last one in the image) to `sectors`: the file, the MBR entry,
/// and the ext4 file system in it.
fn grow_root(
    tools: &Tools,
    img: &Path,
    layout: &Layout,
    sectors: u64,
    scratch: &Path,
) -> Result<()> {
    let p = layout.root;
    if let Some(after) = layout
        .all
        .iter()
        .flatten()
        .find(|o| o.number != p.number && o.start >= p.end())
    {
        bail!(
            "the root partition must grow, but partition {} follows it",
            after.number
        );
    }
    let sectors_u32 = u32::try_from(sectors).context("the grown root partition passes 2 TiB")?;
    ensure!(
        p.start + sectors <= u64::from(u32::MAX),
        "the grown root partition passes 2 TiB"
    );
    // resize2fs cannot work at an offset of an image file: it truncates a regular file to the
    // new file-system size, cutting off the partition's tail. It grows a copy of the partition
    // in a file of its own, which is then written back.
    let part = scratch.join("root.ext4");
    let mut img_file = fs::OpenOptions::new().read(true).write(true).open(img)?;
    {
        img_file.seek(SeekFrom::Start(p.offset()))?;
        let mut out = fs::File::create(&part)?;
        let n = std::io::copy(&mut (&mut img_file).take(p.sectors * SECTOR), &mut out)?;
        ensure!(n == p.sectors * SECTOR, "the root partition is truncated");
        out.set_len(sectors * SECTOR)?;
    }
    checked(
        Command::new(&tools.resize2fs)
            .arg("-f")
            .arg(&part)
            .arg(format!("{}K", sectors * SECTOR / 1024)),
    )
    .context("resize2fs could not grow the root file system")?;
    ensure!(
        fs::metadata(&part)?.len() == sectors * SECTOR,
        "resize2fs left a root file system of an unexpected size"
    );
    img_file.set_len((p.start + sectors) * SECTOR)?;
    img_file.seek(SeekFrom::Start(p.offset()))?;
    std::io::copy(&mut fs::File::open(&part)?, &mut img_file)?;
    img_file.seek(SeekFrom::Start(446 + 16 * (p.number as u64 - 1) + 12))?;
    img_file.write_all(&sectors_u32.to_le_bytes())?;
    img_file.sync_all()?;
    fs::remove_file(&part)?;
    Ok(())
}

/// `cargo xtask image`.
pub fn image(
    board_name: &str,
    base: &Path,
    model: Option<&Path>,
    binary: Option<&Path>,
    features: &[String],
    out: &Path,
) -> Result<()> {
    let board = build::board(board_name)?;
    if !board.name.starts_with("pi") {
        bail!(
            "`image` makes Raspberry Pi OS SD-card images (pi-zero-2w, pi4, pi5); for the {} use \
             `cargo xtask build --board {}` and install the .deb (or `cargo xtask deploy`)",
            board.name,
            board.name
        );
    }
    let tools = tools()?;
    let layout = read_layout(base).with_context(|| format!("base image {}", base.display()))?;
    if let Some(m) = model {
        ensure!(m.is_file(), "--model {}: no such file", m.display());
    }
    if let (Ok(a), Ok(b)) = (base.canonicalize(), out.canonicalize()) {
        ensure!(a != b, "-o must not be the base image");
    }
    let exe = match binary {
        Some(b) => {
            let glibc = build::check_prebuilt(&board, b)?;
            println!(
                "binary {}: GLIBC {}.{} needed (board floor {}.{})",
                b.display(),
                glibc.0,
                glibc.1,
                board.glibc_floor.0,
                board.glibc_floor.1
            );
            b.to_path_buf()
        }
        None => build::board_binary(&board, features)?.0,
    };

    let name = out
        .file_name()
        .context("-o needs a file name")?
        .to_string_lossy()
        .into_owned();
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure!(dir.is_dir(), "{}: no such directory", dir.display());
    let pid = std::process::id();
    let tmp = dir.join(format!(".{name}.partial-{pid}"));
    let scratch = dir.join(format!(".{name}.staging-{pid}"));
    let _pending = Pending {
        paths: vec![tmp.clone(), scratch.clone()],
    };
    fs::create_dir_all(&scratch)?;
    let staged = scratch.join("root");
    crate::package::stage(&board, &exe, model, &staged)?;

    eprintln!("copying {} to {}", base.display(), out.display());
    fs::copy(base, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    install(&board, &tools, &tmp, &layout, &staged, &scratch)?;
    fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "wrote {} ({} MiB)",
        out.display(),
        fs::metadata(out)?.len() >> 20
    );
    Ok(())
}

/// Installs the staged tree into the image `img` (a copy of the base).
fn install(
    board: &Board,
    tools: &Tools,
    img: &Path,
    layout: &Layout,
    staged: &Path,
    scratch: &Path,
) -> Result<()> {
    let mut layout = *layout;
    let fs = Ext4 {
        tools,
        spec: format!("{}?offset={}", img.display(), layout.root.offset()),
    };
    // Only a clean file system is written to.
    let (status, stdout, stderr) = output(Command::new(&tools.e2fsck).arg("-fn").arg(&fs.spec))?;
    if !status.success() {
        bail!("the base image's root file system is not clean (e2fsck -fn): {stdout}{stderr}");
    }
    ensure!(
        fs.kind("/etc")? == Kind::Dir,
        "the root partition has no /etc: not a Raspberry Pi OS root file system"
    );

    // Room for the files, or a larger partition.
    let (bs, free, count) = fs.space()?;
    let need = blocks_needed(staged, bs)? + 64;
    if need > free {
        // Enough for the files, 64 MiB to spare, whole MiB.
        let grow_bytes = (need - free) * bs + (64 << 20);
        let new_bytes = (count * bs + grow_bytes).div_ceil(1 << 20) << 20;
        let new_sectors = (new_bytes / SECTOR).max(layout.root.sectors);
        println!(
            "root file system: {} MiB free, {} MiB needed: growing partition 2 from {} to {} MiB",
            (free * bs) >> 20,
            (need * bs) >> 20,
            (layout.root.sectors * SECTOR) >> 20,
            (new_sectors * SECTOR) >> 20
        );
        grow_root(tools, img, &layout, new_sectors, scratch)?;
        layout.root.sectors = new_sectors;
    }

    let mut cmds = Vec::new();
    let mut dirs_made = std::collections::BTreeSet::new();
    // Directories on the way (including the enable link's), made when missing.
    let mut want_dirs: Vec<String> = tree(staged)?
        .into_iter()
        .filter(|(_, _, d)| *d)
        .map(|(p, _, _)| p)
        .collect();
    want_dirs.push("/etc/systemd/system/multi-user.target.wants".into());
    for d in &want_dirs {
        let mut path = String::new();
        for comp in d.trim_start_matches('/').split('/') {
            path = format!("{path}/{comp}");
            if dirs_made.contains(&path) {
                continue;
            }
            match fs.kind(&path)? {
                Kind::Dir | Kind::Symlink => {}
                Kind::Missing => {
                    cmds.push(format!("mkdir {}", q(&path)));
                    cmds.push(format!("sif {} mode 040755", q(&path)));
                    cmds.push(format!("sif {} uid 0", q(&path)));
                    cmds.push(format!("sif {} gid 0", q(&path)));
                }
                k => bail!("{path} in the image is a {k:?}, not a directory"),
            }
            dirs_made.insert(path.clone());
        }
    }
    // The files, replacing earlier copies.
    use std::os::unix::fs::PermissionsExt;
    for (path, host, is_dir) in tree(staged)? {
        if is_dir {
            continue;
        }
        match fs.kind(&path)? {
            Kind::Missing => {}
            Kind::File | Kind::Symlink => cmds.push(format!("rm {}", q(&path))),
            k => bail!("{path} in the image is a {k:?}, not a file"),
        }
        let mode = fs::metadata(&host)?.permissions().mode() & 0o7777;
        cmds.push(format!("write {} {}", q(&host.to_string_lossy()), q(&path)));
        cmds.push(format!("sif {} mode 0{:o}", q(&path), 0o100000 | mode));
        cmds.push(format!("sif {} uid 0", q(&path)));
        cmds.push(format!("sif {} gid 0", q(&path)));
    }
    // Enabled as `systemctl enable` would: WantedBy=multi-user.target.
    let link = "/etc/systemd/system/multi-user.target.wants/edgellm.service";
    if fs.kind(link)? != Kind::Missing {
        cmds.push(format!("rm {}", q(link)));
    }
    cmds.push(format!("symlink {} {}", q(link), q(unit::UNIT_PATH)));

    // The system user.
    let days = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
        / 86_400;
    let account_files = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"];
    let mut texts = Vec::new();
    for (i, f) in account_files.iter().enumerate() {
        texts.push(match fs.kind(f)? {
            Kind::File => Some(fs.cat(f)?),
            Kind::Missing if i >= 2 => None,
            Kind::Missing => bail!("the image has no {f}: not a Raspberry Pi OS root file system"),
            k => bail!("{f} in the image is a {k:?}, not a file"),
        });
    }
    let added = add_user(
        texts[0].as_deref().unwrap_or_default(),
        texts[1].as_deref().unwrap_or_default(),
        texts[2].as_deref(),
        texts[3].as_deref(),
        unit::USER,
        "/var/lib/edgellm",
        days,
    )?;
    match added {
        None => println!("user {}: already in the image", unit::USER),
        Some(new) => {
            let mut written = Vec::new();
            for (i, (f, text)) in account_files.iter().zip(new).enumerate() {
                let Some(text) = text else { continue };
                written.push(*f);
                let (mode, uid, gid) = fs.owner(f)?;
                let host = scratch.join(format!("account-{i}"));
                fs::write(&host, text)?;
                cmds.push(format!("rm {}", q(f)));
                cmds.push(format!("write {} {}", q(&host.to_string_lossy()), q(f)));
                cmds.push(format!(
                    "sif {} mode 0{:o}",
                    q(f),
                    0o100000 | (mode & 0o7777)
                ));
                cmds.push(format!("sif {} uid {uid}", q(f)));
                cmds.push(format!("sif {} gid {gid}", q(f)));
            }
            println!("user {}: added to {}", unit::USER, written.join(", "));
        }
    }
    fs.script(&cmds, scratch)?;

    // cmdline.txt on the FAT boot partition.
    let fat = format!("{}@@{}", img.display(), layout.boot.offset());
    let cmdline = checked(
        Command::new(&tools.mtype)
            .args(["-i", &fat, "::cmdline.txt"])
            .env("MTOOLS_SKIP_CHECK", "1"),
    )
    .context("cannot read cmdline.txt from the boot partition")?;
    let edited = edit_cmdline(&cmdline, board.cores.inference, board.cores.system)?;
    let host = scratch.join("cmdline.txt");
    fs::write(&host, &edited)?;
    checked(
        Command::new(&tools.mcopy)
            .args(["-o", "-i", &fat])
            .arg(&host)
            .arg("::cmdline.txt")
            .env("MTOOLS_SKIP_CHECK", "1"),
    )
    .context("cannot write cmdline.txt to the boot partition")?;
    println!("cmdline.txt: {}", edited.trim_end());

    // The result must be clean.
    let (status, stdout, stderr) = output(Command::new(&tools.e2fsck).arg("-fn").arg(&fs.spec))?;
    if !status.success() {
        bail!("e2fsck -fn finds the written root file system damaged: {stdout}{stderr}");
    }
    let summary = stdout.lines().last().unwrap_or_default();
    println!("e2fsck -fn: clean ({summary})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MBR with the given (type, start, sectors) entries.
    fn mbr(entries: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        for (i, (kind, start, n)) in entries.iter().enumerate() {
            let e = &mut b[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] = *kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
        }
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn reads_a_raspberry_pi_os_table() {
        // Raspberry Pi OS Bookworm: a 512 MiB FAT32 (LBA) boot at 8192, the root after it.
        let head = mbr(&[(0x0c, 8192, 1_048_576), (0x83, 1_056_768, 4_194_304)]);
        let l = parse_mbr(&head, (1_056_768 + 4_194_304) * 512).unwrap();
        assert_eq!(l.boot.offset(), 8192 * 512);
        assert_eq!(l.root.start, 1_056_768);
        assert_eq!(l.root.sectors, 4_194_304);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let len = 100 << 20;
        let err = |head: &[u8], len: u64| parse_mbr(head, len).unwrap_err().to_string();
        assert!(err(&[0; 100], 100).contains("too small"));
        assert!(err(&[0; 512], len).contains("no MBR"));
        let e = err(&mbr(&[(0x83, 2048, 8192), (0x83, 10240, 8192)]), len);
        assert!(e.contains("partition 1 has type 0x83, not FAT"), "{e}");
        let e = err(&mbr(&[(0x0c, 2048, 8192), (0x07, 10240, 8192)]), len);
        assert!(e.contains("partition 2 has type 0x07, not Linux"), "{e}");
        let e = err(&mbr(&[(0x0c, 2048, 8192), (0x83, 10240, 1 << 20)]), len);
        assert!(e.contains("truncated"), "{e}");
        let e = err(&mbr(&[(0x0c, 2048, 8192), (0x83, 8192, 8192)]), len);
        assert!(e.contains("overlap"), "{e}");
        let e = err(&mbr(&[(0xee, 1, 0xffff_ffff)]), len);
        assert!(e.contains("GPT"), "{e}");
        let e = err(&mbr(&[(0x0c, 2048, 8192)]), len);
        assert!(e.contains("partition 2"), "{e}");
    }

    #[test]
    fn cmdline_gets_isolcpus_and_irqaffinity_once_on_one_line() {
        let base = "console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootwait\n";
        let once = edit_cmdline(base, &[2, 3], &[0, 1]).unwrap();
        assert_eq!(
            once,
            "console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootwait isolcpus=2,3 \
             irqaffinity=0,1\n"
        );
        assert_eq!(edit_cmdline(&once, &[2, 3], &[0, 1]).unwrap(), once);
        let replaced = edit_cmdline(
            "root=/dev/mmcblk0p2 irqaffinity=3 isolcpus=1 quiet\r\n\n",
            &[3],
            &[0, 1, 2],
        )
        .unwrap();
        assert_eq!(
            replaced,
            "root=/dev/mmcblk0p2 quiet isolcpus=3 irqaffinity=0,1,2\n"
        );
        // No system cores listed: interrupts are left where the kernel puts them.
        assert_eq!(
            edit_cmdline("quiet irqaffinity=1\n", &[1], &[]).unwrap(),
            "quiet isolcpus=1\n"
        );
        assert!(edit_cmdline("a=1\nb=2\n", &[2], &[0]).is_err());
        assert!(edit_cmdline("\n", &[2], &[0]).is_err());
    }

    #[test]
    fn user_gets_the_lowest_free_system_id() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n_apt:x:100:65534::/nonexistent:/usr/sbin/nologin\npi:x:1000:1000::/home/pi:/bin/bash";
        let group = "root:x:0:\nsystemd-journal:x:101:\npi:x:1000:\n";
        let [p, g, s, gs] = add_user(
            passwd,
            group,
            Some("root:*:19000:0:99999:7:::\n"),
            None,
            "edgellm",
            "/var/lib/edgellm",
            20000,
        )
        .unwrap()
        .unwrap();
        let p = p.unwrap();
        assert!(p.ends_with(
            "pi:x:1000:1000::/home/pi:/bin/bash\nedgellm:x:102:102:EdgeLLM service:/var/lib/edgellm:/usr/sbin/nologin\n"
        ));
        assert!(g.unwrap().ends_with("pi:x:1000:\nedgellm:x:102:\n"));
        assert!(s.unwrap().ends_with("\nedgellm:!*:20000::::::\n"));
        assert!(gs.is_none());
        // Already there: nothing to do.
        assert!(add_user(&p, group, None, None, "edgellm", "/", 0)
            .unwrap()
            .is_none());
    }
}
