//! What an image is: from its content (magic at offset 0, VHD footer at
//! the end), with the file name's extension as a hint.

use crate::MetaReader;
use crate::SparseError;
use std::fmt;
use vhd1_defs::DISK_TYPE_DIFFERENCING;
use vhd1_defs::DISK_TYPE_DYNAMIC;
use vhd1_defs::DISK_TYPE_FIXED;
use vhd1_defs::FOOTER_SIZE;
use vhd1_defs::Footer;

/// How an image file's bytes map to a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// The file is the disk, byte for byte (no format magic).
    Flat,
    /// A fixed VHD1: the disk followed by a 512-byte footer.
    FixedVhd1,
    /// A dynamic (or differencing, which is refused) VHD1.
    DynamicVhd1,
    /// VHDX.
    Vhdx,
    /// qcow2 (versions 2 and 3).
    Qcow2,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Flat => "raw data (no image format magic)",
            ImageFormat::FixedVhd1 => "a fixed VHD",
            ImageFormat::DynamicVhd1 => "a dynamic VHD",
            ImageFormat::Vhdx => "a VHDX",
            ImageFormat::Qcow2 => "a qcow2 image",
        })
    }
}

/// What a file name's extension says about the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtensionHint {
    /// Nothing (`.raw`, `.img`, `.iso`, no extension, ...): the content
    /// decides, and content without magic is flat.
    None,
    /// `.vhd` or `.vmgs`: a VHD1, fixed or dynamic.
    Vhd,
    /// `.vhdx`.
    Vhdx,
    /// `.qcow2`.
    Qcow2,
}

impl fmt::Display for ExtensionHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExtensionHint::None => "nothing",
            ExtensionHint::Vhd => "VHD (.vhd)",
            ExtensionHint::Vhdx => "VHDX (.vhdx)",
            ExtensionHint::Qcow2 => "qcow2 (.qcow2)",
        })
    }
}

impl ExtensionHint {
    /// The hint of a URL (query and fragment ignored) or path, by the
    /// extension of its last segment, case-insensitive.
    pub fn from_location(url_or_path: &str) -> Self {
        let path = url_or_path.split(['?', '#']).next().unwrap_or(url_or_path);
        let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
        let ext = name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "vhd" | "vmgs" => ExtensionHint::Vhd,
            "vhdx" => ExtensionHint::Vhdx,
            "qcow2" => ExtensionHint::Qcow2,
            _ => ExtensionHint::None,
        }
    }

    fn agrees(self, content: ImageFormat) -> bool {
        match self {
            ExtensionHint::None => true,
            ExtensionHint::Vhd => {
                matches!(content, ImageFormat::FixedVhd1 | ImageFormat::DynamicVhd1)
            }
            ExtensionHint::Vhdx => content == ImageFormat::Vhdx,
            ExtensionHint::Qcow2 => content == ImageFormat::Qcow2,
        }
    }
}

/// The VHD1 format a footer describes, if `bytes` is a valid footer.
fn vhd_footer_format(bytes: &[u8]) -> Option<ImageFormat> {
    let footer = Footer::parse(bytes.try_into().ok()?).ok()?;
    match footer.disk_type {
        DISK_TYPE_FIXED => Some(ImageFormat::FixedVhd1),
        DISK_TYPE_DYNAMIC | DISK_TYPE_DIFFERENCING => Some(ImageFormat::DynamicVhd1),
        _ => None,
    }
}

/// The format magic at the start of an image, if any.
fn head_format(head: &[u8]) -> Option<ImageFormat> {
    if head.starts_with(&qcow2_defs::MAGIC) {
        Some(ImageFormat::Qcow2)
    } else if head.starts_with(&vhdx_defs::FILE_SIGNATURE) {
        Some(ImageFormat::Vhdx)
    } else if head.starts_with(&vhd1_defs::COOKIE) {
        // The footer copy of a dynamic disk (a fixed disk has none).
        vhd_footer_format(head.get(..FOOTER_SIZE)?).filter(|&f| f == ImageFormat::DynamicVhd1)
    } else {
        None
    }
}

/// Detects the format of the image behind `reader` from its content,
/// with `hint` from its name:
/// - a `.vhd` hint looks at the footer first (a fixed VHD's data may
///   start with anything);
/// - otherwise the magic at offset 0 decides (qcow2, VHDX, the footer
///   copy of a dynamic VHD), then a VHD footer at the end;
/// - content that contradicts the hint is [`SparseError::FormatMismatch`]
///   naming both;
/// - content without any magic is flat, except under a `.vhd` hint, where
///   it is taken as a fixed VHD whose footer check then says what is
///   wrong (the rule for images without magic is the extension rule).
///
/// Costs at most two metadata reads (the first piece and the last), which
/// the reader keeps, so a warm open with a piece directory fetches
/// nothing.
pub async fn detect(reader: &MetaReader, hint: ExtensionHint) -> Result<ImageFormat, SparseError> {
    let len = reader.len();
    let tail = || async {
        if len < FOOTER_SIZE as u64 {
            return Ok(None);
        }
        let footer = reader
            .read(len - FOOTER_SIZE as u64..len, "VHD footer")
            .await?;
        Ok::<_, SparseError>(vhd_footer_format(&footer))
    };
    if hint == ExtensionHint::Vhd
        && let Some(format) = tail().await?
    {
        return Ok(format);
    }
    let head = reader
        .read(0..len.min(FOOTER_SIZE as u64), "format magic")
        .await?;
    let mut content = head_format(&head);
    if content.is_none() && hint != ExtensionHint::Vhd {
        content = tail().await?;
    }
    match (hint, content) {
        (hint, Some(content)) if hint.agrees(content) => Ok(content),
        (ExtensionHint::Vhd, None) => Ok(ImageFormat::FixedVhd1),
        (ExtensionHint::None, None) => Ok(ImageFormat::Flat),
        (hint, content) => Err(SparseError::FormatMismatch {
            image: reader.describe(),
            hint,
            content: content.unwrap_or(ImageFormat::Flat),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_last_segment() {
        for (loc, hint) in [
            ("https://h/a/b.vhd?sig=x.qcow2", ExtensionHint::Vhd),
            ("https://h/a/B.VHDX", ExtensionHint::Vhdx),
            ("/img/disk.qcow2", ExtensionHint::Qcow2),
            ("/img/state.vmgs", ExtensionHint::Vhd),
            ("https://h/noble.img", ExtensionHint::None),
            ("https://h/x.raw#frag.vhd", ExtensionHint::None),
            ("https://h.vhd/dir/file", ExtensionHint::None),
        ] {
            assert_eq!(ExtensionHint::from_location(loc), hint, "{loc}");
        }
    }

    #[test]
    fn head_magic() {
        assert_eq!(head_format(b"QFI\xfb\0\0\0\x03"), Some(ImageFormat::Qcow2));
        assert_eq!(head_format(b"vhdxfile"), Some(ImageFormat::Vhdx));
        assert_eq!(head_format(b"conectix"), None);
        let mut f = Footer::new_fixed(1 << 20, [1; 16]).unwrap();
        assert_eq!(head_format(&f.to_bytes()), None);
        f.disk_type = DISK_TYPE_DYNAMIC;
        assert_eq!(head_format(&f.to_bytes()), Some(ImageFormat::DynamicVhd1));
        assert_eq!(head_format(&[0; 512]), None);
    }
}
