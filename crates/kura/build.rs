//! Link settings for the `kura` binary.
//!
//! On Linux with glibc 2.36 or later the binary is linked with packed relative relocations
//! (`-z pack-relative-relocs`, DT_RELR). The position-independent binary carries about 23,000
//! relative relocations; glibc reads every one at each start, so their 550 KiB of `.rela.dyn`
//! were part of every process's resident memory. Packed, they take 6 KiB, and the idle RSS falls
//! by about 0.5 MiB (BENCHMARKS.md, session 14). A binary linked so needs glibc 2.36 at run
//! time, so the build host's glibc decides: on an older system the binary links as before.
//! `KURA_PACK_RELOCS=0` turns it off for a binary meant to run on older systems than the one
//! that builds it.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KURA_PACK_RELOCS");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.ends_with("-linux-gnu") {
        return;
    }
    if std::env::var("KURA_PACK_RELOCS").is_ok_and(|v| v == "0") {
        return;
    }
    if host_glibc().is_some_and(|version| version >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build host's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn host_glibc() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut parts = text.trim().strip_prefix("glibc ")?.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
