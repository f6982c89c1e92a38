//! Tests of the Debian guest's recipe and, when it is built, of the built
//! guest itself.
//!
//! The whole build (mmdebstrap, about a minute plus the packages' download)
//! is not repeated here: `cargo xtask test` builds the guest once before
//! the tests, and [`the_built_guest_matches_its_manifest_and_recipe`]
//! checks what it built (under `CI=true` its absence is a failure).

use super::*;
use crate::guest_image::hex;

#[test]
fn disk_size_is_the_catalogs_and_chs_exact() {
    assert_eq!(disk_size(), KnownTestArtifacts::Debian12X64Raw.size());
    assert_eq!(
        disk_size() + vhd1_defs::FOOTER_SIZE as u64,
        KnownTestArtifacts::Debian12X64Vhd.size()
    );
    assert!(disk_size() >= DISK_SIZE_BASE && disk_size() < DISK_SIZE_BASE + (1 << 20));
    let chs = vhd1_defs::Geometry::from_disk_size(disk_size()).sectors() * 512;
    assert_eq!(chs, disk_size());
    for (file, artifact) in [
        (KERNEL_FILE, KnownTestArtifacts::Debian12X64Kernel),
        (INITRD_FILE, KnownTestArtifacts::Debian12X64Initrd),
        (RAW_FILE, KnownTestArtifacts::Debian12X64Raw),
        (VHD_FILE, KnownTestArtifacts::Debian12X64Vhd),
    ] {
        assert_eq!(file, artifact.file_name());
        assert_eq!(artifact.built_guest(), Some(BuiltGuest::Debian12));
    }
}

#[test]
fn inputs_hash_sees_sources_and_tool_versions() {
    let a = inputs_hash(
        "Types: deb\nURIs: http://a/\n",
        "mmdebstrap 1.3.5",
        "mke2fs 1.47.0",
    );
    assert_eq!(
        a,
        inputs_hash(
            "Types: deb\nURIs: http://a/\n",
            "mmdebstrap 1.3.5",
            "mke2fs 1.47.0"
        )
    );
    assert_ne!(
        a,
        inputs_hash(
            "Types: deb\nURIs: http://b/\n",
            "mmdebstrap 1.3.5",
            "mke2fs 1.47.0"
        )
    );
    assert_ne!(
        a,
        inputs_hash(
            "Types: deb\nURIs: http://a/\n",
            "mmdebstrap 1.3.6",
            "mke2fs 1.47.0"
        )
    );
    assert_ne!(
        a,
        inputs_hash(
            "Types: deb\nURIs: http://a/\n",
            "mmdebstrap 1.3.5",
            "mke2fs 1.47.1"
        )
    );
}

fn manifest(files: Vec<ManifestFile>) -> DebianManifest {
    DebianManifest {
        format: FORMAT,
        inputs_sha256: "abc".into(),
        suite: "bookworm".into(),
        variant: VARIANT.into(),
        include: vec![],
        apt_sources: String::new(),
        mmdebstrap_version: "m".into(),
        mke2fs_version: "e".into(),
        kernel_version: "k".into(),
        packages: vec![],
        disk_size: 6,
        fs_uuid: FS_UUID.into(),
        vhd_unique_id: "00".into(),
        files,
    }
}

/// The rule (inputs, format, files and sizes) is the shared
/// `current_manifest`, tested with the petri guest's manifest; here, that
/// the Debian guest applies it to its own manifest file and format.
#[test]
fn up_to_date_reads_the_debian_manifest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), b"kernel").unwrap();
    let m = manifest(vec![ManifestFile {
        role: "kernel".into(),
        name: "k".into(),
        size: 6,
        sha256: sha256_hex(b"kernel"),
    }]);
    let json = serde_json::to_string(&m).unwrap();
    // The petri guest's manifest is another file: it never counts.
    assert_ne!(MANIFEST_FILE, crate::guest_image::MANIFEST_FILE);
    std::fs::write(dir.path().join(crate::guest_image::MANIFEST_FILE), &json).unwrap();
    assert!(up_to_date(dir.path(), "abc").is_none(), "no manifest yet");
    std::fs::write(dir.path().join(MANIFEST_FILE), &json).unwrap();
    assert_eq!(up_to_date(dir.path(), "abc"), Some(m.clone()));
    assert!(up_to_date(dir.path(), "abd").is_none(), "inputs changed");
    let older = DebianManifest {
        format: FORMAT - 1,
        ..m
    };
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        serde_json::to_string(&older).unwrap(),
    )
    .unwrap();
    assert!(up_to_date(dir.path(), "abc").is_none(), "another format");
}

#[test]
fn customize_adds_the_unit_enabled_and_drops_resolv_conf() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
    std::fs::write(tree.join("etc/hostname"), "build-host\n").unwrap();
    customize(tree).unwrap();
    // Twice is fine (a rerun over the same tree).
    customize(tree).unwrap();
    assert!(!tree.join("etc/resolv.conf").exists());
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/hostname")).unwrap(),
        "petri-debian\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/fstab")).unwrap(),
        guest_files::fstab()
    );
    let script = tree.join(guest_files::READY_SCRIPT);
    assert_eq!(
        std::fs::metadata(&script).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let link = std::fs::read_link(tree.join(guest_files::READY_UNIT_WANTS_LINK)).unwrap();
    assert_eq!(
        link,
        Path::new("/etc/systemd/system/petri-guest-ready.service")
    );
    assert_eq!(
        std::fs::read_to_string(tree.join(guest_files::READY_UNIT_PATH)).unwrap(),
        guest_files::ready_unit()
    );
}

#[test]
fn tree_times_lists_every_path_once_without_following_links() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::write(tree.join("usr/bin/b"), "b").unwrap();
    std::fs::write(tree.join("a file"), "a").unwrap();
    std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
    let paths: Vec<String> = tree_times(&tree)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        paths,
        ["/", "/a file", "/bin", "/usr", "/usr/bin", "/usr/bin/b"]
    );
    assert!(tree_times(&tree).unwrap().iter().all(|(_, t)| *t > 0));
}

#[test]
fn quoting_and_mount_guard() {
    assert_eq!(sh_quote(Path::new("/a b/c")), "'/a b/c'");
    assert_eq!(sh_quote(Path::new("/it's")), r"'/it'\''s'");
    // /proc is a mount point under /: the guard sees it.
    assert!(mounts_under(Path::new("/")).contains(&PathBuf::from("/proc")));
    let dir = tempfile::tempdir().unwrap();
    assert!(mounts_under(dir.path()).is_empty());
    remove_work_dir(&dir.path().join("missing")).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("rootfs/proc")).unwrap();
    let err = refuse_mounts(&work, &[work.join("rootfs/proc")]).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("still mounted") && text.contains("rootfs/proc"),
        "{text}"
    );
    refuse_mounts(&work, &[]).unwrap();
    remove_work_dir(&work).unwrap();
    assert!(!work.exists());
}

/// The folder the built guest is in: `$VMM_TEST_IMAGES`, else `images/`.
fn images_dir() -> PathBuf {
    std::env::var_os("VMM_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../images"))
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .expect("running debugfs");
    assert!(out.status.success(), "debugfs {request} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_built_guest_matches_its_manifest_and_recipe() {
    let dir = images_dir();
    let Ok(text) = std::fs::read_to_string(dir.join(MANIFEST_FILE)) else {
        let msg = format!(
            "the Debian guest is not built in {} (`{}`)",
            dir.display(),
            BuiltGuest::Debian12.build_command()
        );
        assert!(!crate::is_ci(), "{msg}");
        eprintln!("skipping: {msg}");
        return;
    };
    let m: DebianManifest = serde_json::from_str(&text).unwrap();
    assert_eq!(m.format, FORMAT);
    assert_eq!(m.disk_size, disk_size());
    assert_eq!(m.fs_uuid, FS_UUID);
    for p in INCLUDE {
        assert!(
            m.packages.iter().any(|x| x.split(' ').next() == Some(p)),
            "{p} is not installed: {:?}",
            m.packages
        );
    }
    assert!(m.packages.iter().any(|p| p.starts_with("systemd ")));
    // Every file is what the manifest says, byte for byte.
    for f in &m.files {
        let (size, sha) = sha256_file(&dir.join(&f.name)).unwrap();
        assert_eq!(
            (size, sha.as_str()),
            (f.size, f.sha256.as_str()),
            "{}",
            f.name
        );
    }
    let raw = dir.join(RAW_FILE);
    let vhd = dir.join(VHD_FILE);
    // The VHD is the raw disk plus a fixed footer keyed by the content.
    let len = std::fs::metadata(&vhd).unwrap().len();
    assert_eq!(len, disk_size() + 512);
    let mut footer = [0u8; vhd1_defs::FOOTER_SIZE];
    {
        use std::io::Read;
        use std::io::Seek;
        let mut f = std::fs::File::open(&vhd).unwrap();
        f.seek(std::io::SeekFrom::Start(disk_size())).unwrap();
        f.read_exact(&mut footer).unwrap();
    }
    let footer = vhd1_defs::Footer::parse_fixed(&footer, len).unwrap();
    assert_eq!(footer.current_size, disk_size());
    assert_eq!(footer.unique_id_hex(), m.vhd_unique_id);
    let raw_sha = &m
        .files
        .iter()
        .find(|f| f.role == "disk-raw")
        .unwrap()
        .sha256;
    assert_eq!(hex(&footer.unique_id), raw_sha[..32]);

    // The root filesystem holds our files, enabled, with normalised times.
    assert_eq!(
        debugfs(&raw, &format!("cat /{}", guest_files::READY_UNIT_PATH)),
        guest_files::ready_unit()
    );
    assert_eq!(
        debugfs(&raw, &format!("cat /{}", guest_files::READY_SCRIPT)),
        guest_files::ready_script()
    );
    assert_eq!(debugfs(&raw, "cat /etc/fstab"), guest_files::fstab());
    assert_eq!(
        debugfs(&raw, &format!("cat /{}", guest_files::INITRAMFS_ROOT_CONF)),
        guest_files::initramfs_root_conf()
    );
    let link = debugfs(
        &raw,
        &format!("stat /{}", guest_files::READY_UNIT_WANTS_LINK),
    );
    assert!(
        link.contains("Fast link dest: \"/etc/systemd/system/petri-guest-ready.service\""),
        "{link}"
    );
    assert!(
        debugfs(&raw, "stat /etc/resolv.conf").is_empty(),
        "the host's resolv.conf is in the guest"
    );
    // Our file was written after the fixed time: every time is the fixed
    // time (1704067200 = 0x65920080).
    let stat = debugfs(&raw, "stat /etc/fstab");
    for field in [" ctime", " atime", " mtime", "crtime"] {
        assert!(
            stat.contains(&format!("{field}: 0x65920080:00000000")),
            "{field}: {stat}"
        );
    }
    let superblock = debugfs(&raw, "stats");
    assert!(superblock.contains(&format!("Filesystem UUID:          {FS_UUID}")));
    assert!(superblock.contains("Filesystem volume name:   debian-root"));
}
