//! The root disk: a staging directory (busybox, `/init`, reproducible data
//! files) turned into an ext4 image by `mke2fs -d`, then normalised with
//! `debugfs` so that the image's bytes depend only on its contents.
//!
//! Determinism: mke2fs gets a fixed UUID (`-U`), a fixed directory hash
//! seed (`-E hash_seed=`), a fixed clock (`E2FSPROGS_FAKE_TIME`) and our
//! own `mke2fs.conf` (`MKE2FS_CONFIG`), so neither the host's config nor
//! the time changes the superblock. `mke2fs -d` copies each staged file's
//! owner and times (including ctime, which cannot be set from user space),
//! so a `debugfs` pass then sets uid/gid 0 and every timestamp to the same
//! fixed time on every inode we staged, plus `/` and `/lost+found`.
//!
//! Data files: `/data/data-NNN.bin`, [`DATA_FILE_MIB`] MiB each (the last
//! one may be shorter), filled from a seeded xoshiro256** generator keyed
//! by the file index, so a file's bytes depend only on its index and size.
//! `/data/SHA256SUMS` lists their hashes in `sha256sum` format.

use super::scripts;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use rand::RngCore;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256StarStar;
use sha2::Digest;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Size of each data file in MiB.
pub const DATA_FILE_MIB: u64 = 16;
/// The fixed time (2024-01-01T00:00:00Z) every timestamp on the disk gets.
pub const FIXED_TIME: u64 = 1_704_067_200;
/// Filesystem UUID of the root disk.
pub const FS_UUID: &str = "7e57a11e-9e57-4b00-8000-00000000d15c";
/// Directory hash seed of the root disk.
const HASH_SEED: &str = "5eed5eed-0000-4000-8000-000000000001";
/// Seed of the data file generator.
const DATA_SEED: u64 = 0x7065_7472_6964_6174; // "petridat"

/// The mke2fs configuration we use instead of the host's
/// `/etc/mke2fs.conf`, so the features do not vary between hosts.
pub const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// The generator of data file `index`: xoshiro256** seeded through
/// splitmix64 (`rand_xoshiro`'s `seed_from_u64`). Its output is part of the
/// image format: changing the algorithm or the seed changes the disk.
/// Data files are whole MiB, so only whole 64-bit words are used (a short
/// tail would take a word's high bytes).
fn data_rng(index: usize) -> Xoshiro256StarStar {
    Xoshiro256StarStar::seed_from_u64(
        DATA_SEED ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
}

/// The data file names and sizes for `data_mib` MiB of data.
pub fn data_files(data_mib: u64) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut left = data_mib;
    let mut i = 0;
    while left > 0 {
        let mib = left.min(DATA_FILE_MIB);
        out.push((format!("data-{i:03}.bin"), mib << 20));
        left -= mib;
        i += 1;
    }
    out
}

/// Writes data file number `index` of `size` bytes to `path`, returning
/// its sha256.
fn write_data_file(path: &Path, index: usize, size: u64) -> Result<String> {
    let mut rng = data_rng(index);
    let file = std::fs::File::create(path)
        .with_context(|| format!("creating data file {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])
            .with_context(|| format!("writing data file {}", path.display()))?;
        left -= n as u64;
    }
    w.flush()
        .with_context(|| format!("writing data file {}", path.display()))?;
    Ok(super::hex(&hasher.finalize()))
}

/// The size of the root disk for `data_mib` MiB of data: the data plus
/// room for busybox, the journal and ext4 metadata (48 MiB plus 1/16),
/// rounded up to the next multiple of 4 KiB (the ext4 block) that the VHD1
/// CHS geometry describes exactly.
///
/// Why the CHS rounding: readers disagree on a fixed VHD's size. Hyper-V
/// and our `disk_blob` use the footer's current size; Virtual PC, and
/// QEMU's `vpc` driver for creator apps it does not know (ours is `vmmt`),
/// use cylinders * heads * sectors. With a size both agree on, every
/// reader sees the same disk (e.g. `qemu-img compare` against the raw
/// file passes without `force_size_calc`).
pub fn disk_size(data_mib: u64) -> u64 {
    chs_exact_size((data_mib + 48 + data_mib / 16) << 20)
}

/// The smallest multiple of 4 KiB at or above `base` that the VHD1 CHS
/// geometry describes exactly (see [`disk_size`] for why), or `base`
/// itself past the CHS limit.
pub fn chs_exact_size(base: u64) -> u64 {
    // An exact size lies within a few hundred 4 KiB steps for every
    // regime of the CHS algorithm (at most lcm(8, 255 * 16) sectors
    // apart); past the CHS limit (127 GiB) there is none, so keep the base.
    let base = base.div_ceil(4096) * 4096;
    (0..4096u64)
        .map(|i| base + i * 4096)
        .find(|&s| vhd1_defs::Geometry::from_disk_size(s).sectors() * vhd1_defs::SECTOR_SIZE == s)
        .unwrap_or(base)
}

/// A path staged into the root disk, for the debugfs normalisation pass.
struct Staged {
    /// Paths inside the disk, each starting with `/`.
    paths: Vec<String>,
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Fills `staging` with the root disk's files.
fn stage(staging: &Path, busybox: &Path, data_mib: u64) -> Result<Staged> {
    let mut paths = Vec::new();
    let mut dir = |rel: &str, mode: u32| -> Result<()> {
        let p = staging.join(rel);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        set_mode(&p, mode)?;
        paths.push(format!("/{rel}"));
        Ok(())
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("data", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("scratch", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        dir(d, mode)?;
    }

    let bb = staging.join("bin/busybox");
    std::fs::copy(busybox, &bb)
        .with_context(|| format!("copying {} to {}", busybox.display(), bb.display()))?;
    set_mode(&bb, 0o755)?;
    paths.push("/bin/busybox".into());
    // One symlink per applet, from the binary's own list, so the disk needs
    // no `busybox --install` (which would write to it) at boot.
    for applet in super::host::busybox_applets(busybox)? {
        let link = staging.join("bin").join(&applet);
        std::os::unix::fs::symlink("busybox", &link)
            .with_context(|| format!("creating the symlink {}", link.display()))?;
        paths.push(format!("/bin/{applet}"));
    }

    let init = staging.join("init");
    std::fs::write(&init, scripts::root_init())
        .with_context(|| format!("writing {}", init.display()))?;
    set_mode(&init, 0o755)?;
    paths.push("/init".into());

    let release = staging.join("etc/petri-release");
    std::fs::write(&release, format!("petri test guest\ndata_mib={data_mib}\n"))
        .with_context(|| format!("writing {}", release.display()))?;
    set_mode(&release, 0o644)?;
    paths.push("/etc/petri-release".into());

    let mut sums = String::new();
    for (i, (name, size)) in data_files(data_mib).into_iter().enumerate() {
        let p = staging.join("data").join(&name);
        let hash = write_data_file(&p, i, size)?;
        set_mode(&p, 0o644)?;
        sums.push_str(&format!("{hash}  {name}\n"));
        paths.push(format!("/data/{name}"));
    }
    let sums_path = staging.join("data/SHA256SUMS");
    std::fs::write(&sums_path, sums).with_context(|| format!("writing {}", sums_path.display()))?;
    set_mode(&sums_path, 0o644)?;
    paths.push("/data/SHA256SUMS".into());

    paths.push("/".into());
    paths.push("/lost+found".into());
    paths.sort();
    Ok(Staged { paths })
}

/// Runs a command with the fixed-clock and config environment; fails with
/// its stderr.
pub(super) fn run_e2fs(cmd: &mut Command, what: &str, conf: &Path) -> Result<String> {
    let out = cmd
        .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string())
        .env("MKE2FS_CONFIG", conf)
        .output()
        .with_context(|| format!("running {what} (install e2fsprogs)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// How [`make_ext4`] makes a filesystem.
pub(super) struct Ext4Spec<'a> {
    /// The volume label.
    pub label: &'a str,
    /// The filesystem UUID.
    pub uuid: &'a str,
    /// The directory hash seed.
    pub hash_seed: &'a str,
    /// The image size in bytes.
    pub size: u64,
}

/// Makes the ext4 image `raw` (which must not exist) of `spec.size` bytes
/// holding the files of `staging` (`mke2fs -d`), with our own
/// `mke2fs.conf` written to `conf`, the fixed clock, UUID and hash seed.
pub(super) fn make_ext4(
    raw: &Path,
    staging: &Path,
    conf: &Path,
    spec: &Ext4Spec<'_>,
) -> Result<()> {
    std::fs::write(conf, MKE2FS_CONF).with_context(|| format!("writing {}", conf.display()))?;
    let file = std::fs::File::create(raw).with_context(|| format!("creating {}", raw.display()))?;
    file.set_len(spec.size)
        .with_context(|| format!("sizing {} to {} bytes", raw.display(), spec.size))?;
    drop(file);
    run_e2fs(
        Command::new("mke2fs")
            .args([
                "-q", "-F", "-t", "ext4", "-L", spec.label, "-m", "0", "-U", spec.uuid,
            ])
            .arg("-E")
            .arg(format!(
                "hash_seed={},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
                spec.hash_seed
            ))
            .arg("-d")
            .arg(staging)
            .arg(raw),
        &format!("mke2fs -d {} {}", staging.display(), raw.display()),
        conf,
    )?;
    Ok(())
}

/// The debugfs commands that set inode `path`'s fields (`sif`), one line
/// each. debugfs takes the path in double quotes, so a path holding one
/// (or a line break) cannot be expressed: an error.
///
/// Time fields (`atime`, `mtime`, `ctime`, `crtime`) are written as
/// `@<seconds>`: debugfs reads a bare number there as a `YYYYMMDD...` date
/// (1704067200 became 1976-08-21).
pub(super) fn sif_commands(path: &str, fields: &[(&str, u64)]) -> Result<String> {
    if path.contains(['"', '\n', '\r']) {
        bail!("cannot normalise {path:?} with debugfs: the path holds a quote or a line break");
    }
    let mut cmds = String::new();
    for (field, value) in fields {
        let at = if field.ends_with("time") { "@" } else { "" };
        cmds.push_str(&format!("sif \"{path}\" {field} {at}{value}\n"));
    }
    Ok(cmds)
}

/// Runs the debugfs commands `cmds` (written to `cmd_file`) on `raw`, then
/// checks the filesystem with `e2fsck -f -n`. debugfs reports per-command
/// errors on stderr but exits 0, so any such line is an error.
pub(super) fn debugfs_then_check(
    raw: &Path,
    cmds: &str,
    cmd_file: &Path,
    conf: &Path,
) -> Result<()> {
    std::fs::write(cmd_file, cmds).with_context(|| format!("writing {}", cmd_file.display()))?;
    let stderr = run_e2fs(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(cmd_file)
            .arg(raw),
        &format!("debugfs -w -f {} {}", cmd_file.display(), raw.display()),
        conf,
    )?;
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .take(20)
        .collect();
    if !errors.is_empty() {
        bail!(
            "debugfs could not normalise {}: {}",
            raw.display(),
            errors.join("; ")
        );
    }
    // The filesystem must be clean.
    run_e2fs(
        Command::new("e2fsck").args(["-f", "-n"]).arg(raw),
        &format!("e2fsck -f -n {}", raw.display()),
        conf,
    )
    .with_context(|| format!("checking the new root disk {}", raw.display()))?;
    Ok(())
}

/// Builds the root disk image at `raw` (which must not exist), using
/// `work` as scratch space. Returns the image size.
pub fn build(raw: &Path, work: &Path, busybox: &Path, data_mib: u64) -> Result<u64> {
    let staging = work.join("rootfs");
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let staged = stage(&staging, busybox, data_mib)?;

    let conf = work.join("mke2fs.conf");
    let size = disk_size(data_mib);
    make_ext4(
        raw,
        &staging,
        &conf,
        &Ext4Spec {
            label: "petri-root",
            uuid: FS_UUID,
            hash_seed: HASH_SEED,
            size,
        },
    )?;

    // Normalise owners and times of everything we staged.
    let mut cmds = String::new();
    for p in &staged.paths {
        cmds.push_str(&sif_commands(
            p,
            &[
                ("uid", 0),
                ("gid", 0),
                ("atime", FIXED_TIME),
                ("mtime", FIXED_TIME),
                ("ctime", FIXED_TIME),
                ("crtime", FIXED_TIME),
                ("atime_extra", 0),
                ("mtime_extra", 0),
                ("ctime_extra", 0),
                ("crtime_extra", 0),
            ],
        )?);
    }
    debugfs_then_check(raw, &cmds, &work.join("debugfs.cmds"), &conf)?;
    Ok(size)
}

/// The sha256 of the data file contents for `index`/`size`, without
/// writing them (for tests).
#[cfg(test)]
pub fn data_file_sha(index: usize, size: u64) -> String {
    use super::sha256_hex;
    let mut buf = vec![0u8; size as usize];
    data_rng(index).fill_bytes(&mut buf);
    sha256_hex(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_image::sha256_hex;

    #[test]
    fn the_data_generator_is_stable() {
        // Pinned output: the data files are part of the image format.
        // Cross-checked with an independent Python implementation of
        // splitmix64 + xoshiro256** (the generator this module carried
        // before it used rand_xoshiro's, which gives the same words).
        let mut r = Xoshiro256StarStar::seed_from_u64(0);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            first,
            [
                11091344671253066420,
                13793997310169335082,
                1900383378846508768
            ]
        );
        // Bytes are the words, little-endian, in order.
        let mut buf = [0u8; 16];
        Xoshiro256StarStar::seed_from_u64(7).fill_bytes(&mut buf);
        let mut r = Xoshiro256StarStar::seed_from_u64(7);
        assert_eq!(buf[..8], r.next_u64().to_le_bytes());
        assert_eq!(buf[8..], r.next_u64().to_le_bytes());
    }

    #[test]
    fn data_files_split_into_16_mib_pieces() {
        assert!(data_files(0).is_empty());
        assert_eq!(data_files(1), [("data-000.bin".to_string(), 1 << 20)]);
        let f = data_files(40);
        assert_eq!(f.len(), 3);
        assert_eq!(f[2], ("data-002.bin".to_string(), 8 << 20));
        assert_eq!(f.iter().map(|x| x.1).sum::<u64>(), 40 << 20);
    }

    #[test]
    fn disk_size_leaves_room_and_matches_chs_geometry() {
        // 320 MiB rounded up to 651 cylinders * 16 heads * 63 sectors.
        assert_eq!(disk_size(256), 651 * 16 * 63 * 512);
        for mib in [1, 2, 7, 20, 100, 200, 1000, 20_000, 40_000, 65_536] {
            let s = disk_size(mib);
            let base = (mib + 48 + mib / 16) << 20;
            assert!(s >= base && s < base + (16 << 20), "{mib} MiB: {s}");
            assert_eq!(s % 4096, 0, "{mib} MiB: {s}");
            let chs = vhd1_defs::Geometry::from_disk_size(s).sectors() * 512;
            assert_eq!(chs, s, "{mib} MiB: CHS covers {chs} of {s} bytes");
        }
    }

    #[test]
    fn chs_exact_sizes() {
        // 2 GiB rounds up to 4162 cylinders * 16 heads * 63 sectors.
        assert_eq!(chs_exact_size(2 << 30), 4162 * 16 * 63 * 512);
        assert_eq!(chs_exact_size(2 << 30), 2_147_991_552);
        // An exact size stays; an odd one is rounded to 4 KiB first.
        let exact = disk_size(256);
        assert_eq!(chs_exact_size(exact), exact);
        assert_eq!(chs_exact_size(exact - 1), exact);
    }

    #[test]
    fn sif_commands_quote_paths_and_refuse_quotes() {
        assert_eq!(
            sif_commands("/a b", &[("mtime", 5), ("uid", 0), ("mtime_extra", 0)]).unwrap(),
            "sif \"/a b\" mtime @5\nsif \"/a b\" uid 0\nsif \"/a b\" mtime_extra 0\n"
        );
        let err = sif_commands("/a\"b", &[("mtime", 5)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("quote"), "{err}");
        assert!(sif_commands("/a\nb", &[]).is_err());
    }

    #[test]
    fn data_file_writer_matches_generator_and_differs_per_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let h0 = write_data_file(&p, 0, 100_001).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 100_001);
        assert_eq!(h0, sha256_hex(&std::fs::read(&p).unwrap()));
        assert_eq!(h0, data_file_sha(0, 100_001));
        assert_ne!(h0, data_file_sha(1, 100_001));
    }
}
