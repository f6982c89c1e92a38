//! Tests of the whole build (real packages, real mke2fs, real QEMU) and of
//! the output helpers.
//!
//! The whole-build tests need the Debian packages. When they are missing:
//! as root they are installed; under CI without root the test fails;
//! otherwise it prints why and returns.

use super::*;

/// Whether the packages are there (installing them as root); `false` means
/// skip (the reason is printed).
fn have_packages(packages: &[&str], test: &str) -> bool {
    if packages.is_empty() {
        return true;
    }
    if host::is_root() {
        host::ensure_packages(packages, test).expect("installing the test's packages");
        return true;
    }
    let msg = format!(
        "{test}: needs the Debian packages {} (run as root to install them)",
        packages.join(" ")
    );
    assert!(!crate::is_ci(), "{msg}");
    eprintln!("skipping {msg}");
    false
}

fn build_packages_ready(test: &str) -> bool {
    have_packages(&host::missing_build_packages(), test)
}

fn qemu_ready(test: &str) -> bool {
    let missing: &[&str] = if Path::new(host::QEMU_BINARY).exists() {
        &[]
    } else {
        &[host::QEMU_PACKAGE]
    };
    have_packages(missing, test)
}

fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .expect("running debugfs");
    assert!(out.status.success(), "debugfs cat {path} failed");
    out.stdout
}

#[test]
fn rebuild_is_byte_identical_and_skips_when_up_to_date() {
    if !build_packages_ready("rebuild_is_byte_identical_and_skips_when_up_to_date") {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let opts = |dir: &Path| BuildOptions {
        out_dir: dir.join("images"),
        data_mib: 20,
        force: false,
    };
    let (ma, oa) = build(&opts(a.path())).unwrap();
    let (mb, ob) = build(&opts(b.path())).unwrap();
    assert_eq!((oa, ob), (BuildOutcome::Built, BuildOutcome::Built));
    assert_eq!(ma, mb, "two builds must produce the same manifest");

    // The files on disk are what the manifests say, byte for byte.
    for f in &ma.files {
        for dir in [a.path(), b.path()] {
            let (size, sha) = sha256_file(&dir.join("images").join(&f.name)).unwrap();
            assert_eq!(
                (size, sha.as_str()),
                (f.size, f.sha256.as_str()),
                "{}",
                f.name
            );
        }
    }
    let manifest_a = std::fs::read(a.path().join("images").join(MANIFEST_FILE)).unwrap();
    let manifest_b = std::fs::read(b.path().join("images").join(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest_a, manifest_b);

    // The VHD is the raw disk plus a valid fixed footer keyed by content.
    let out = a.path().join("images");
    let vhd = std::fs::read(out.join(VHD_FILE)).unwrap();
    let raw = std::fs::read(out.join(RAW_FILE)).unwrap();
    assert_eq!(raw.len() as u64, ma.disk_size);
    assert_eq!(&vhd[..raw.len()], &raw[..]);
    let footer: [u8; vhd1_defs::FOOTER_SIZE] = vhd[raw.len()..].try_into().unwrap();
    let footer = vhd1_defs::Footer::parse_fixed(&footer, vhd.len() as u64).unwrap();
    assert_eq!(footer.current_size, ma.disk_size);
    assert_eq!(footer.unique_id_hex(), ma.vhd_unique_id);
    assert_eq!(ma.vhd_unique_id, ma.file("disk-raw").unwrap().sha256[..32]);

    // QEMU's own VHD driver sees the same disk (the size is CHS-exact).
    if Path::new("/usr/bin/qemu-img").exists() {
        let out = std::process::Command::new("/usr/bin/qemu-img")
            .args(["compare", "-f", "vpc", "-F", "raw"])
            .arg(out.join(VHD_FILE))
            .arg(out.join(RAW_FILE))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "qemu-img compare: {text}");
        assert!(!text.contains("mismatch"), "qemu-img compare: {text}");
    } else {
        assert!(!crate::is_ci(), "qemu-img is missing (package qemu-utils)");
        eprintln!("skipping the qemu-img compare: /usr/bin/qemu-img is missing (qemu-utils)");
    }

    // Every inode we staged has the fixed owner and times.
    let stat = std::process::Command::new("debugfs")
        .args(["-R", "stat /init"])
        .arg(out.join(RAW_FILE))
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    for field in [" ctime", " atime", " mtime", "crtime"] {
        assert!(
            stat.contains(&format!("{field}: 0x65920080:00000000")),
            "{field}: {stat}"
        );
    }
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");

    // The disk holds the init script and the data files' hashes.
    let init = debugfs_cat(&out.join(RAW_FILE), "/init");
    assert_eq!(init, scripts::root_init().into_bytes());
    let sums = String::from_utf8(debugfs_cat(&out.join(RAW_FILE), "/data/SHA256SUMS")).unwrap();
    let expected: String = rootfs::data_files(20)
        .iter()
        .enumerate()
        .map(|(i, (name, size))| format!("{}  {name}\n", rootfs::data_file_sha(i, *size)))
        .collect();
    assert_eq!(sums, expected);
    let data1 = debugfs_cat(&out.join(RAW_FILE), "/data/data-001.bin");
    assert_eq!(data1.len(), 4 << 20);
    assert_eq!(sha256_hex(&data1), rootfs::data_file_sha(1, 4 << 20));

    // The initramfs loads the storage modules after their dependencies.
    for m in [
        "virtio_pci",
        "virtio_blk",
        "ext4",
        "jbd2",
        "mbcache",
        "crc16",
    ] {
        assert!(
            ma.modules.iter().any(|x| x == m),
            "{m} missing from {:?}",
            ma.modules
        );
    }
    let pos = |m: &str| ma.modules.iter().position(|x| x == m).unwrap();
    assert!(pos("jbd2") < pos("ext4"));

    // Up to date: nothing is rewritten.
    let before = std::fs::metadata(out.join(RAW_FILE))
        .unwrap()
        .modified()
        .unwrap();
    let (m2, o2) = build(&opts(a.path())).unwrap();
    assert_eq!(o2, BuildOutcome::UpToDate);
    assert_eq!(m2, ma);
    let after = std::fs::metadata(out.join(RAW_FILE))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    // --force rebuilds, to the same bytes; another --data-mib is not up to date.
    let (m3, o3) = build(&BuildOptions {
        force: true,
        ..opts(a.path())
    })
    .unwrap();
    assert_eq!((o3, &m3), (BuildOutcome::Built, &ma));
    let (m4, o4) = build(&BuildOptions {
        data_mib: 3,
        ..opts(a.path())
    })
    .unwrap();
    assert_eq!(o4, BuildOutcome::Built);
    assert_ne!(m4.inputs_sha256, ma.inputs_sha256);
    assert_ne!(m4.vhd_unique_id, ma.vhd_unique_id);

    // No work directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn guest_boots_runs_steps_and_powers_off() {
    if !build_packages_ready("guest_boots_runs_steps_and_powers_off")
        || !qemu_ready("guest_boots_runs_steps_and_powers_off")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("images");
    let (m, _) = build(&BuildOptions {
        out_dir: out.clone(),
        data_mib: 2,
        force: false,
    })
    .unwrap();
    let r = smoke::boot(&smoke::BootSpec {
        kernel: &out.join(KERNEL_FILE),
        initrd: &out.join(INITRD_FILE),
        disk: smoke::BootDisk::RawFile(&out.join(RAW_FILE)),
        steps: "hash-data,write-scratch,fail,bogus",
        work_dir: &dir.path().join("boot"),
        timeout: Duration::from_secs(600),
        memory_mib: BuiltGuest::PetriTestGuest.boot_memory_mib(),
        processors: BuiltGuest::PetriTestGuest.boot_processors(),
    })
    .unwrap();
    let has = |line: &str| r.console.lines().any(|l| l == line);
    let data_sha = rootfs::data_file_sha(0, 2 << 20);
    assert!(
        has(&format!("PETRI_HASH /data/data-000.bin {data_sha}")),
        "{}",
        r.console
    );
    assert!(has("PETRI_HASH_CHECK ok files=1"), "{}", r.console);
    assert!(has("PETRI_STEP hash-data status=0"), "{}", r.console);
    let scratch_sha = sha256_hex(&scripts::scratch_content());
    assert!(
        has(&format!(
            "PETRI_WRITE file=/scratch/written.bin bytes={} sha256={scratch_sha}",
            scripts::SCRATCH_BYTES
        )),
        "{}",
        r.console
    );
    assert!(has("PETRI_STEP write-scratch status=0"), "{}", r.console);
    assert!(has("PETRI_STEP fail status=1"), "{}", r.console);
    assert!(has("PETRI_STEP bogus status=127"), "{}", r.console);
    // The first failure wins.
    assert_eq!(r.status, 1);
    assert!(r.to_ready <= r.to_done);
    // The guest read the data file but nowhere near the whole disk, and
    // its writes went to the snapshot overlay, not the image.
    assert!(r.rd_bytes >= 2 << 20, "read only {} bytes", r.rd_bytes);
    assert!(r.rd_bytes < m.disk_size, "read {} bytes", r.rd_bytes);
    assert!(
        r.wr_bytes >= scripts::SCRATCH_BYTES as u64,
        "wrote {} bytes",
        r.wr_bytes
    );
    let (_, sha) = sha256_file(&out.join(RAW_FILE)).unwrap();
    assert_eq!(
        sha,
        m.file("disk-raw").unwrap().sha256,
        "snapshot=on kept the image unchanged"
    );
}

#[test]
fn vhd_is_raw_plus_footer_keyed_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let vhd = dir.path().join("d.vhd");
    let data = blob_test_servers::images::random_bytes(1, 3 << 20);
    std::fs::write(&raw, &data).unwrap();
    let (raw_sha, vhd_sha, id) = write_vhd(&raw, &vhd, data.len() as u64).unwrap();
    let bytes = std::fs::read(&vhd).unwrap();
    assert_eq!(raw_sha, sha256_hex(&data));
    assert_eq!(vhd_sha, sha256_hex(&bytes));
    assert_eq!(&bytes[..data.len()], &data[..]);
    let footer: [u8; 512] = bytes[data.len()..].try_into().unwrap();
    let f = vhd1_defs::Footer::parse_fixed(&footer, bytes.len() as u64).unwrap();
    assert_eq!(f.unique_id, id);
    assert_eq!(hex(&id), raw_sha[..32]);
    // A size that disagrees with the file is refused.
    let err = write_vhd(&raw, &vhd, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("expected 1048576"), "{err}");
}

#[test]
fn up_to_date_needs_matching_inputs_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), b"kernel").unwrap();
    let m = Manifest {
        format: FORMAT,
        inputs_sha256: "abc".into(),
        kernel_version: "v".into(),
        kernel_package: "p".into(),
        busybox_package: "b".into(),
        mke2fs_version: "m".into(),
        data_mib: 1,
        disk_size: 6,
        fs_uuid: rootfs::FS_UUID.into(),
        vhd_unique_id: "00".into(),
        modules: vec![],
        files: vec![ManifestFile {
            role: "kernel".into(),
            name: "k".into(),
            size: 6,
            sha256: sha256_hex(b"kernel"),
        }],
    };
    assert!(up_to_date(dir.path(), "abc").is_none(), "no manifest yet");
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    assert_eq!(up_to_date(dir.path(), "abc"), Some(m.clone()));
    assert!(up_to_date(dir.path(), "abd").is_none(), "inputs changed");
    std::fs::write(dir.path().join("k"), b"kernel2").unwrap();
    assert!(up_to_date(dir.path(), "abc").is_none(), "size changed");
    std::fs::remove_file(dir.path().join("k")).unwrap();
    assert!(up_to_date(dir.path(), "abc").is_none(), "file missing");
    std::fs::write(dir.path().join(MANIFEST_FILE), "{not json").unwrap();
    assert!(up_to_date(dir.path(), "abc").is_none(), "corrupt manifest");
}
