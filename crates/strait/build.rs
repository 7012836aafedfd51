//! Links the `strait` binary with packed relative relocations (`DT_RELR`).
//!
//! A position-independent executable carries one relocation per pointer in its read-only data
//! (vtables, string tables): about 50,000 here, 1.2 MB in the RELA format, which the dynamic
//! loader reads in full at every start, so it stays resident in every proxy. Packed into RELR
//! it is 15 kB, and an idle proxy's RSS drops by 0.9 MB (gateway) to 1.8 MB (node proxy).
//!
//! The loader must understand RELR: glibc 2.36 or newer. Linked against such a glibc, the
//! binary records that as a version requirement (`GLIBC_ABI_DT_RELR`), and an older glibc
//! refuses to start it with an error naming that version. Packing is turned on for native
//! builds on glibc 2.36 or newer, which link against the building machine's own glibc. A
//! build that links against another glibc (a sysroot, a glibc-versioned target) must say so:
//! `STRAIT_PACK_RELOCS=0` turns packing off, `=1` turns it on whatever the checks say. The
//! container image builds on Debian 12 and runs on Debian 12 (glibc 2.36).

use std::env;

/// The first glibc whose loader applies `DT_RELR`.
const RELR_GLIBC: (u32, u32) = (2, 36);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=STRAIT_PACK_RELOCS");
    let pack = match env::var("STRAIT_PACK_RELOCS").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => native_glibc_has_relr(),
    };
    if pack {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// A native Linux build on glibc 2.36 or newer.
fn native_glibc_has_relr() -> bool {
    let target = env::var("TARGET").unwrap_or_default();
    let host = env::var("HOST").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // A cross build's loader is unknown from here: leave the default format.
    if target != host || target_os != "linux" || target_env != "gnu" {
        return false;
    }
    host_glibc().is_some_and(|version| version >= RELR_GLIBC)
}

/// The (major, minor) version of the glibc this build script runs on, which for a native
/// build is the one the binary links against.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn host_glibc() -> Option<(u32, u32)> {
    use std::ffi::{CStr, c_char};
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const c_char;
    }
    // SAFETY: glibc returns a pointer to a static, NUL-terminated version string.
    let version = unsafe { CStr::from_ptr(gnu_get_libc_version()) };
    parse_version(version.to_str().ok()?)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn host_glibc() -> Option<(u32, u32)> {
    None
}

/// "2.36" (or "2.36.1") → (2, 36).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}
