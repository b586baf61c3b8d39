//! The dynamic loaders a sandbox with restricted execution must still let the kernel run.
//!
//! Starting a dynamically linked ELF, the kernel opens its PT_INTERP (ld.so) for
//! execution, and landlock checks that open like any exec: the loader needs EXECUTE (and
//! READ_FILE). The shared libraries ld.so then maps are opened for reading and mmap'ed
//! PROT_EXEC, which landlock does not check, so libraries need only read access.
//!
//! Caveat: an executable loader can be run directly (`ld.so /usr/bin/id`) and then loads
//! any ELF it can *read* without the kernel's exec check. Restricting execution stops a
//! task from exec'ing the system's tools; it is not a boundary against code that maps
//! readable programs itself, which gains nothing landlock does not already allow it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Directories searched for loaders, each with its multiarch subdirectories (`*-linux-*`).
pub const LOADER_DIRS: [&str; 8] =
    ["/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32"];

/// The dynamic loaders present beneath [`LOADER_DIRS`]: glibc's `ld-linux*.so*`,
/// `ld64.so*`, `ld.so.1`, and musl's `ld-musl-*.so*`.
pub fn dynamic_loaders() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in LOADER_DIRS.iter().map(Path::new) {
        scan(dir, &mut found);
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.contains("-linux-")) {
                scan(&e.path(), &mut found);
            }
        }
    }
    found
}

/// [`dynamic_loaders`], scanned once per process: the library directories hold thousands
/// of entries, and a spawner's children inherit the list instead of scanning before every
/// exec. A loader is a path glibc keeps stable across upgrades.
pub(crate) fn dynamic_loaders_cached() -> &'static [PathBuf] {
    static LOADERS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOADERS.get_or_init(dynamic_loaders)
}

fn scan(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(is_loader_name) {
            found.push(e.path());
        }
    }
}

fn is_loader_name(name: &str) -> bool {
    let prefix = ["ld-linux", "ld64.so", "ld.so.", "ld-musl-"].iter().any(|p| name.starts_with(p));
    prefix && name.contains(".so") && !name.ends_with(".conf") && !name.ends_with(".cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_names() {
        for yes in ["ld-linux-x86-64.so.2", "ld-linux.so.2", "ld64.so.2", "ld.so.1", "ld-musl-x86_64.so.1"] {
            assert!(is_loader_name(yes), "{yes}");
        }
        for no in ["ld.so.cache", "ld.so.conf", "libc.so.6", "ldconfig", "ld-linux"] {
            assert!(!is_loader_name(no), "{no}");
        }
    }

    #[test]
    fn finds_this_systems_loader() {
        // The test binary itself is dynamically linked on every supported platform.
        let loaders = dynamic_loaders();
        assert!(!loaders.is_empty(), "no dynamic loader beneath {LOADER_DIRS:?}");
        assert!(loaders.iter().all(|p| p.is_file()), "{loaders:?}");
    }
}
