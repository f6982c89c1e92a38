//! Artifact identities: [`ArtifactId`], typed and erased handles, and the
//! declare macros.

use std::cmp::Ordering;
use std::fmt;
use std::hash::Hash;
use std::hash::Hasher;
use std::marker::PhantomData;

/// A type tag naming one artifact.
///
/// Sealed by convention: implement it only through [`declare_artifacts!`](crate::declare_artifacts)
/// or [`declare_blob_artifacts!`](crate::declare_blob_artifacts), which guarantee a globally unique id.
pub trait ArtifactId: 'static {
    /// Globally unique id: the declaring module path, `::`, and the NAME.
    const GLOBAL_UNIQUE_ID: &'static str;

    /// Whether the artifact may be served remotely as a blob disk (declared
    /// with [`declare_blob_artifacts!`](crate::declare_blob_artifacts)).
    const BLOB_CAPABLE: bool;

    /// Guard against hand-written implementations; the declare macros
    /// implement it.
    #[doc(hidden)]
    fn i_know_what_im_doing_with_this_manual_impl_instead_of_using_the_declare_artifacts_macro();
}

/// A typed handle to an artifact declared with [`declare_artifacts!`](crate::declare_artifacts) or
/// [`declare_blob_artifacts!`](crate::declare_blob_artifacts). Zero-sized and `Copy`.
pub struct ArtifactHandle<A: ArtifactId>(PhantomData<fn() -> A>);

impl<A: ArtifactId> ArtifactHandle<A> {
    /// Creates the handle. Used by the declare macros.
    pub const fn new() -> Self {
        Self(PhantomData)
    }

    /// Erases the type tag.
    pub const fn erase(self) -> ErasedArtifactHandle {
        ErasedArtifactHandle {
            id: A::GLOBAL_UNIQUE_ID,
            blob_capable: A::BLOB_CAPABLE,
        }
    }

    /// The artifact's globally unique id.
    pub const fn id(self) -> &'static str {
        A::GLOBAL_UNIQUE_ID
    }

    /// Whether the artifact may be served remotely as a blob disk.
    pub const fn is_blob_capable(self) -> bool {
        A::BLOB_CAPABLE
    }
}

impl<A: ArtifactId> Default for ArtifactHandle<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: ArtifactId> Clone for ArtifactHandle<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A: ArtifactId> Copy for ArtifactHandle<A> {}

impl<A: ArtifactId> fmt::Debug for ArtifactHandle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.erase(), f)
    }
}

impl<A: ArtifactId> PartialEq for ArtifactHandle<A> {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl<A: ArtifactId> Eq for ArtifactHandle<A> {}

impl<A: ArtifactId> PartialEq<ErasedArtifactHandle> for ArtifactHandle<A> {
    fn eq(&self, other: &ErasedArtifactHandle) -> bool {
        self.erase() == *other
    }
}

impl<A: ArtifactId> PartialEq<ArtifactHandle<A>> for ErasedArtifactHandle {
    fn eq(&self, other: &ArtifactHandle<A>) -> bool {
        *self == other.erase()
    }
}

/// A handle to an artifact with its type tag erased: the artifact's id and
/// whether it is blob-capable.
///
/// Equality, ordering and hashing use the id only. `Debug` and `Display`
/// print the id (`crate::module::NAME`).
#[derive(Clone, Copy)]
pub struct ErasedArtifactHandle {
    id: &'static str,
    blob_capable: bool,
}

impl ErasedArtifactHandle {
    /// The artifact's globally unique id (`crate::module::NAME`).
    pub const fn id(&self) -> &'static str {
        self.id
    }

    /// The declared NAME: the last `::` segment of the id.
    pub fn name(&self) -> &'static str {
        match self.id.rfind("::") {
            Some(i) => &self.id[i + 2..],
            None => self.id,
        }
    }

    /// Whether the artifact was declared with [`declare_blob_artifacts!`](crate::declare_blob_artifacts)
    /// and so may be served remotely as a blob disk.
    pub const fn is_blob_capable(&self) -> bool {
        self.blob_capable
    }
}

impl PartialEq for ErasedArtifactHandle {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ErasedArtifactHandle {}

impl PartialOrd for ErasedArtifactHandle {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ErasedArtifactHandle {
    fn cmp(&self, other: &Self) -> Ordering {
        self.id.cmp(other.id)
    }
}

impl Hash for ErasedArtifactHandle {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl fmt::Debug for ErasedArtifactHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id)
    }
}

impl fmt::Display for ErasedArtifactHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id)
    }
}

/// Anything that names an artifact: typed or erased handles.
pub trait AsArtifactHandle {
    /// The erased handle.
    fn erase(&self) -> ErasedArtifactHandle;
}

impl AsArtifactHandle for ErasedArtifactHandle {
    fn erase(&self) -> ErasedArtifactHandle {
        *self
    }
}

impl<A: ArtifactId> AsArtifactHandle for ArtifactHandle<A> {
    fn erase(&self) -> ErasedArtifactHandle {
        ArtifactHandle::erase(*self)
    }
}

impl<T: AsArtifactHandle + ?Sized> AsArtifactHandle for &T {
    fn erase(&self) -> ErasedArtifactHandle {
        (**self).erase()
    }
}

/// Declares artifacts that are only ever used as local files.
///
/// Each `NAME` becomes a `pub const NAME: ArtifactHandle<NAME>` and a type
/// tag `pub enum NAME {}` implementing [`ArtifactId`] with id
/// `module_path!()::NAME`.
///
/// ```
/// pub mod firmware {
///     petri_artifacts_core::declare_artifacts! {
///         /// A UEFI firmware image.
///         UEFI_FIRMWARE_X64,
///     }
/// }
/// let h = firmware::UEFI_FIRMWARE_X64.erase();
/// assert!(h.id().ends_with("::firmware::UEFI_FIRMWARE_X64"));
/// assert!(!h.is_blob_capable());
/// ```
#[macro_export]
macro_rules! declare_artifacts {
    ($( $(#[$attr:meta])* $name:ident ),* $(,)?) => {
        $crate::__declare_artifacts_inner!(false; $( $(#[$attr])* $name ),*);
    };
}

/// Declares artifacts that may be served remotely as blob disks (fixed VHD1
/// or flat images readable with HTTP range requests).
///
/// Same shape as [`declare_artifacts!`](crate::declare_artifacts); the handles report
/// [`ErasedArtifactHandle::is_blob_capable`] = `true`.
///
/// ```
/// pub mod test_vhd {
///     petri_artifacts_core::declare_blob_artifacts! {
///         /// A test disk.
///         SOME_DISK,
///     }
/// }
/// assert!(test_vhd::SOME_DISK.is_blob_capable());
/// ```
#[macro_export]
macro_rules! declare_blob_artifacts {
    ($( $(#[$attr:meta])* $name:ident ),* $(,)?) => {
        $crate::__declare_artifacts_inner!(true; $( $(#[$attr])* $name ),*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __declare_artifacts_inner {
    ($blob:literal; $( $(#[$attr:meta])* $name:ident ),*) => {
        $(
            $(#[$attr])*
            #[allow(non_upper_case_globals)]
            pub const $name: $crate::ArtifactHandle<$name> = $crate::ArtifactHandle::new();

            #[doc = $crate::__private::concat!("Type tag for [`", $crate::__private::stringify!($name), "`].")]
            #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
            #[derive(Debug)]
            pub enum $name {}

            impl $crate::ArtifactId for $name {
                const GLOBAL_UNIQUE_ID: &'static str = $crate::__private::concat!(
                    $crate::__private::module_path!(),
                    "::",
                    $crate::__private::stringify!($name)
                );
                const BLOB_CAPABLE: bool = $blob;
                fn i_know_what_im_doing_with_this_manual_impl_instead_of_using_the_declare_artifacts_macro() {}
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    mod a {
        crate::declare_artifacts! {
            /// Same name as in `b`.
            SHARED,
            /// Another.
            OTHER,
        }
    }

    mod b {
        crate::declare_blob_artifacts! {
            /// Same name as in `a`.
            SHARED,
        }
    }

    #[test]
    fn same_name_in_different_modules_does_not_collide() {
        let ha = a::SHARED.erase();
        let hb = b::SHARED.erase();
        assert_ne!(ha, hb);
        assert_ne!(ha.id(), hb.id());
        assert_eq!(ha.name(), "SHARED");
        assert_eq!(hb.name(), "SHARED");
        let set: HashSet<_> = [ha, hb, a::OTHER.erase()].into_iter().collect();
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn ids_are_module_path_and_name() {
        assert_eq!(
            a::SHARED.id(),
            concat!(module_path!(), "::a::SHARED"),
            "id is the declaring module path plus NAME"
        );
        assert_eq!(b::SHARED.id(), concat!(module_path!(), "::b::SHARED"));
    }

    #[test]
    fn blob_flag_follows_the_macro() {
        assert!(!a::SHARED.is_blob_capable());
        assert!(!a::SHARED.erase().is_blob_capable());
        assert!(b::SHARED.is_blob_capable());
        assert!(b::SHARED.erase().is_blob_capable());
    }

    #[test]
    fn debug_prints_the_readable_id() {
        let expected = concat!(module_path!(), "::a::OTHER");
        assert_eq!(format!("{:?}", a::OTHER), expected);
        assert_eq!(format!("{:?}", a::OTHER.erase()), expected);
        assert_eq!(a::OTHER.erase().to_string(), expected);
        assert!(format!("{:?}", b::SHARED).contains("SHARED"));
    }

    #[test]
    fn typed_and_erased_compare() {
        assert!(a::SHARED == a::SHARED.erase());
        assert!(a::SHARED.erase() == a::SHARED);
        assert!(b::SHARED != a::SHARED.erase());
        assert_eq!(AsArtifactHandle::erase(&&a::OTHER), a::OTHER.erase());
    }

    #[test]
    fn erase_is_const() {
        const H: ErasedArtifactHandle = a::OTHER.erase();
        assert_eq!(H, a::OTHER);
    }
}
