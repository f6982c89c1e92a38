//! Unit tests of the parent module.

use super::*;
use crate::guest_image::INITRD_FILE;
use crate::guest_image::KERNEL_FILE;
use crate::guest_image::MANIFEST_FILE;
use crate::guest_image::RAW_FILE;
use crate::guest_image::VHD_FILE;

/// A fake built guest: the real file names, tiny contents.
fn built_guest(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in [KERNEL_FILE, INITRD_FILE, RAW_FILE, VHD_FILE, MANIFEST_FILE] {
        std::fs::write(dir.join(name), name).unwrap();
    }
}

#[test]
fn local_folder_gets_only_the_local_only_files() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("store");
    built_guest(&images);
    let local = tmp.path().join("local");
    // A stale file from an earlier run goes away.
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join(VHD_FILE), "stale").unwrap();
    let streamed = prepare_local_images(&images, &local).unwrap();
    let mut names: Vec<&str> = streamed.iter().map(|a| a.file_name()).collect();
    names.sort();
    assert_eq!(names, [RAW_FILE, VHD_FILE]);
    let mut present: Vec<String> = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(present, [INITRD_FILE, KERNEL_FILE]);
    assert_eq!(
        std::fs::read_to_string(local.join(KERNEL_FILE)).unwrap(),
        KERNEL_FILE
    );
    // The store itself is untouched.
    assert!(images.join(VHD_FILE).is_file());

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = prepare_local_images(&empty, &local)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing would stream"), "{err}");
}

#[test]
fn disks_the_resolver_would_find_locally_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws");
    let images = tmp.path().join("store");
    built_guest(&images);
    let local = tmp.path().join("local");
    let streamed = prepare_local_images(&images, &local).unwrap();
    std::fs::create_dir_all(root.join("images")).unwrap();
    // A copy in <workspace>/images does not matter: VMM_TEST_IMAGES
    // replaces that folder.
    std::fs::write(root.join("images").join(VHD_FILE), "x").unwrap();
    refuse_local_copies(&root, &local, &streamed).unwrap();
    // A copy in the folder the tests search would win over the URL.
    std::fs::write(local.join(VHD_FILE), "x").unwrap();
    let err = refuse_local_copies(&root, &local, &streamed)
        .unwrap_err()
        .to_string();
    assert!(err.contains(VHD_FILE), "{err}");
    assert!(err.contains("instead of streaming"), "{err}");
}

#[test]
fn guests_select_their_tests() {
    assert_eq!(guest_filterset(&GuestChoice::All.guests()), None);
    let petri = guest_filterset(&GuestChoice::Petri.guests()).unwrap();
    assert_eq!(
        petri,
        "not (test(~debian_12_x64) | test(~debian_12_raw_x64))"
    );
    let debian = guest_filterset(&GuestChoice::Debian.guests()).unwrap();
    assert_eq!(debian, "test(~debian_12_x64) | test(~debian_12_raw_x64)");
    // The names the filters look for are the ones the tests carry.
    for name in [
        "remote_mirror::qemu_linux_direct_x64_debian_12_x64::cold_boot",
        "debian_guest::qemu_linux_direct_x64_debian_12_raw_x64::boot_to_marker",
    ] {
        assert!(
            name.contains("debian_12_x64") || name.contains("debian_12_raw_x64"),
            "{name}"
        );
    }
    let mut debian_disks: Vec<&str> = guest_disks(&[BuiltGuest::Debian12])
        .iter()
        .map(|a| a.file_name())
        .collect();
    debian_disks.sort();
    assert_eq!(
        debian_disks,
        ["petri-debian-12-x64.raw", "petri-debian-12-x64.vhd"]
    );
}

#[test]
fn the_guest_disks_are_the_raw_and_vhd_root_disks() {
    let guest_disks = || guest_disks(&[BuiltGuest::PetriTestGuest]);
    let mut names: Vec<&str> = guest_disks().iter().map(|a| a.file_name()).collect();
    names.sort();
    assert_eq!(names, [RAW_FILE, VHD_FILE]);
    // Checked before anything is built: a workspace copy is refused
    // (or only warned about with --allow-local).
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    std::fs::create_dir_all(tmp.path().join("images")).unwrap();
    std::fs::write(tmp.path().join("images").join(RAW_FILE), "x").unwrap();
    check_streaming(tmp.path(), &local, &guest_disks(), false).unwrap();
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join(RAW_FILE), "x").unwrap();
    let err = check_streaming(tmp.path(), &local, &guest_disks(), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--allow-local"), "{err}");
    check_streaming(tmp.path(), &local, &guest_disks(), true).unwrap();
}

#[test]
fn cache_folder_is_emptied_only_when_it_is_ours_or_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let root = tmp.path();
    // Ours: emptied.
    std::fs::create_dir_all(work.join("cache/old")).unwrap();
    let dir = prepare_cache(&work, None, false, root).unwrap();
    assert_eq!(dir, work.join("cache"));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    // Given and missing or empty: used as is.
    let given = tmp.path().join("user-cache");
    assert_eq!(
        prepare_cache(&work, Some(&given), false, root).unwrap(),
        given
    );
    assert!(given.is_dir());
    // Given and not empty: refused, unless --clear-cache.
    std::fs::write(given.join("keep"), "x").unwrap();
    let err = prepare_cache(&work, Some(&given), false, root)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--clear-cache"), "{err}");
    assert!(given.join("keep").is_file());
    prepare_cache(&work, Some(&given), true, root).unwrap();
    assert_eq!(std::fs::read_dir(&given).unwrap().count(), 0);
}

#[test]
fn store_stats_delta() {
    let before = BlobServerStats {
        requests: 5,
        bytes_sent: 100,
        head_requests: 1,
        ..Default::default()
    };
    let after = BlobServerStats {
        requests: 9,
        bytes_sent: 1100,
        head_requests: 2,
        range_requests: 3,
        ..Default::default()
    };
    let d = stats_delta(&before, &after);
    assert_eq!(
        (d.requests, d.bytes_sent, d.head_requests, d.range_requests),
        (4, 1000, 1, 3)
    );
}
