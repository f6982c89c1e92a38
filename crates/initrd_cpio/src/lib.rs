//! A deterministic writer of "newc" (SVR4, magic `070701`) cpio archives,
//! the format the Linux kernel unpacks as an initramfs.
//!
//! Position in the data flow: none at run time. `cargo xtask guest-test
//! build-image` builds the petri test guest's initramfs with it (busybox,
//! kernel modules, `/init`); the guest boots from that under QEMU. It
//! writes archives and never reads them.
//!
//! Model: an [`Archive`] is a set of entries keyed by path (no leading `/`),
//! written in sorted path order, which puts every directory before its
//! contents, as the kernel's unpacker needs. Every entry has uid/gid 0, one
//! fixed mtime and an inode number equal to its position, so the same
//! entries always give the same bytes whatever the host's files look like.
//!
//! Invariants: each header field is 8 uppercase hex digits, names and data
//! are padded to 4-byte boundaries with zeros, and the archive ends with the
//! `TRAILER!!!` entry. An entry whose size, name length or inode number
//! would not fit a header field is refused when it is added, so
//! [`Archive::to_bytes`] cannot fail.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

/// Why an entry cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    /// The path is empty or has an empty, `.` or `..` component.
    #[error(
        "invalid cpio path {path:?}: use a relative path without empty, `.` or `..` components"
    )]
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// A parent of the path is already in the archive as something other
    /// than a directory.
    #[error("cpio path {path:?}: {parent:?} is already in the archive and is not a directory")]
    NotADirectory {
        /// The path being added.
        path: String,
        /// The parent that is not a directory.
        parent: String,
    },
    /// The path is already in the archive (only a directory may be added
    /// again, which updates its permissions).
    #[error("cpio path {path:?} added twice")]
    Duplicate {
        /// The path.
        path: String,
    },
    /// A size or count does not fit the format's 32-bit header fields.
    #[error("cpio path {path:?}: {what} ({len}) does not fit a newc header field (at most {max})", max = u32::MAX)]
    TooLarge {
        /// The path being added.
        path: String,
        /// What is too large: the data, the name, or the entry count.
        what: &'static str,
        /// Its size.
        len: u64,
    },
}

/// What an archive entry is.
#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    /// Permission bits (the file type is added from `kind`).
    perm: u32,
}

/// An in-memory newc cpio archive.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
    mtime: u32,
}

impl Archive {
    /// An empty archive whose entries all carry `mtime` (seconds since the
    /// epoch).
    pub fn new(mtime: u32) -> Self {
        Self {
            entries: BTreeMap::new(),
            mtime,
        }
    }

    fn insert(&mut self, path: &str, kind: Kind, perm: u32) -> Result<(), CpioError> {
        let path = path.trim_start_matches('/');
        if path.is_empty()
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(CpioError::InvalidPath {
                path: path.to_owned(),
            });
        }
        let data_len = match &kind {
            Kind::File(data) => data.len(),
            Kind::Symlink(target) => target.len(),
            Kind::Dir | Kind::CharDev { .. } => 0,
        };
        fits(path, "the data", data_len)?;
        // The name field counts the terminating NUL.
        fits(path, "the name", path.len() + 1)?;
        // Inode numbers start at 1; the parents added below and this entry
        // need one each.
        let components = path.split('/').count();
        fits(path, "the entry count", self.entries.len() + components)?;
        // Parent directories are implied, as with `mkdir -p`.
        let mut parent = String::new();
        for comp in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                Some(Entry {
                    kind: Kind::Dir, ..
                }) => {}
                Some(_) => {
                    return Err(CpioError::NotADirectory {
                        path: path.to_owned(),
                        parent,
                    });
                }
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            kind: Kind::Dir,
                            perm: 0o755,
                        },
                    );
                }
            }
        }
        if let Some(old) = self.entries.get(path)
            && !(matches!(old.kind, Kind::Dir) && matches!(kind, Kind::Dir))
        {
            return Err(CpioError::Duplicate {
                path: path.to_owned(),
            });
        }
        self.entries.insert(path.to_string(), Entry { kind, perm });
        Ok(())
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.insert(path, Kind::Dir, perm)
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), CpioError> {
        self.insert(path, Kind::File(data), perm)
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.insert(path, Kind::Symlink(target.to_string()), 0o777)
    }

    /// Adds a character device node.
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert(path, Kind::CharDev { major, minor }, perm)
    }

    /// Serialises the archive. Every size and count fits its header field
    /// (checked when the entry was added).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match &entry.kind {
                Kind::Dir => (0o040000, &[], (0, 0)),
                Kind::File(d) => (0o100000, d, (0, 0)),
                Kind::Symlink(t) => (0o120000, t.as_bytes(), (0, 0)),
                Kind::CharDev { major, minor } => (0o020000, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry.kind, Kind::Dir) {
                2
            } else {
                1
            };
            write_entry(
                &mut out,
                path,
                (i + 1) as u32,
                mode | (entry.perm & 0o7777),
                nlink,
                self.mtime,
                data,
                rdev,
            );
        }
        write_entry(&mut out, "TRAILER!!!", 0, 0, 1, 0, &[], (0, 0));
        out
    }
}

/// Checks that `len` fits a header field.
fn fits(path: &str, what: &'static str, len: usize) -> Result<(), CpioError> {
    if u32::try_from(len).is_ok() {
        Ok(())
    } else {
        Err(CpioError::TooLarge {
            path: path.to_owned(),
            what,
            len: len as u64,
        })
    }
}

#[expect(clippy::too_many_arguments)]
fn write_entry(
    out: &mut Vec<u8>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    data: &[u8],
    rdev: (u32, u32),
) {
    out.extend_from_slice(b"070701");
    let namesize = name.len() as u32 + 1;
    for field in [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        mtime,
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize,
        0, // check
    ] {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal reader of what [`Archive::to_bytes`] writes, to check the
    /// layout independently of the writer's loops.
    fn parse(b: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let align = |x: usize| x.div_ceil(4) * 4;
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(&b[pos..pos + 6], b"070701");
            let field = |i: usize| {
                let hex = &b[pos + 6 + i * 8..pos + 14 + i * 8];
                u32::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap()
            };
            let (mode, size, rdevmajor, namesize) = (field(1), field(6), field(9), field(11));
            let name_start = pos + 110;
            let name_end = name_start + namesize as usize - 1;
            let name = std::str::from_utf8(&b[name_start..name_end])
                .unwrap()
                .to_string();
            assert_eq!(b[name_end], 0, "name is NUL-terminated");
            let data_start = align(name_end + 1);
            let data = b[data_start..data_start + size as usize].to_vec();
            pos = align(data_start + size as usize);
            if name == "TRAILER!!!" {
                assert_eq!(pos, b.len(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, rdevmajor, data));
        }
    }

    #[test]
    fn entries_are_sorted_with_parents_first_and_padded() {
        let mut a = Archive::new(1);
        a.file("sbin/x", 0o755, b"hello".to_vec()).unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        let bytes = a.to_bytes();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "sbin",
                "sbin/x"
            ]
        );
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(entries[1].1, 0o120777);
        assert_eq!(entries[1].3, b"busybox");
        assert_eq!(entries[3].1, 0o020600);
        assert_eq!(entries[3].2, 5);
        assert_eq!(entries[6].3, b"hello");
        // Same input, same bytes.
        assert_eq!(bytes, a.to_bytes());
    }

    #[test]
    fn rejects_bad_paths_and_duplicates() {
        let mut a = Archive::new(0);
        for bad in ["", "/", "../x", "a//b", "a/./b", "a/"] {
            assert_eq!(
                a.file(bad, 0o644, vec![]),
                Err(CpioError::InvalidPath {
                    path: bad.trim_start_matches('/').to_owned()
                }),
                "{bad:?}"
            );
        }
        a.file("a", 0o644, vec![]).unwrap();
        assert_eq!(
            a.file("a", 0o644, vec![]),
            Err(CpioError::Duplicate { path: "a".into() })
        );
        assert_eq!(
            a.file("a/b", 0o644, vec![]),
            Err(CpioError::NotADirectory {
                path: "a/b".into(),
                parent: "a".into()
            })
        );
        assert!(
            a.dir("a", 0o755).is_err(),
            "a file does not become a directory"
        );
        a.dir("d", 0o755).unwrap();
        a.dir("d", 0o755).unwrap();
        // Nothing refused was added.
        let names: Vec<String> = parse(&a.to_bytes()).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["a", "d"]);
    }

    #[test]
    fn implied_parents_are_0755_until_added_with_their_own_mode() {
        let mut a = Archive::new(0);
        a.file("etc/init.d/rc", 0o700, b"x".to_vec()).unwrap();
        a.dir("etc/init.d", 0o750).unwrap();
        let entries = parse(&a.to_bytes());
        let modes: Vec<(&str, u32)> = entries.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            modes,
            [
                ("etc", 0o040755),
                ("etc/init.d", 0o040750),
                ("etc/init.d/rc", 0o100700)
            ]
        );
    }

    #[test]
    fn headers_carry_fixed_owner_time_and_positional_inodes() {
        let mut a = Archive::new(0x1234_5678);
        a.file("b", 0o644, b"12345".to_vec()).unwrap();
        a.file("a", 0o644, vec![]).unwrap();
        let bytes = a.to_bytes();
        let header = |at: usize, field: usize| {
            let hex = &bytes[at + 6 + field * 8..at + 14 + field * 8];
            u32::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap()
        };
        // "a" comes first: inode 1, uid 0, gid 0, one link, the mtime.
        assert_eq!(
            [0, 2, 3, 4, 5].map(|f| header(0, f)),
            [1, 0, 0, 1, 0x1234_5678]
        );
        // Header (110) + "a\0" padded to 112; no data.
        assert_eq!([0, 6].map(|f| header(112, f)), [2, 5]);
        assert!(bytes.ends_with(b"TRAILER!!!\0\0\0\0"), "{bytes:?}");
        assert_eq!(bytes, a.to_bytes(), "the same entries, the same bytes");
        assert_eq!(
            std::str::from_utf8(&bytes[6..110])
                .unwrap()
                .chars()
                .filter(|c| !c.is_ascii_digit() && !('A'..='F').contains(c))
                .count(),
            0,
            "header fields are uppercase hex"
        );
    }

    #[test]
    fn sizes_beyond_the_header_fields_are_refused() {
        assert!(fits("x", "the data", u32::MAX as usize).is_ok());
        assert_eq!(
            fits("x", "the data", u32::MAX as usize + 1),
            Err(CpioError::TooLarge {
                path: "x".into(),
                what: "the data",
                len: u64::from(u32::MAX) + 1
            })
        );
        let message = fits("x", "the data", usize::MAX).unwrap_err().to_string();
        assert!(
            message.contains("\"x\"") && message.contains("newc"),
            "{message}"
        );
    }
}
