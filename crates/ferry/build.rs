//! Link settings for the `ferry` binary that keep its resident memory small.
//!
//! - `symbol-order.txt` lists the functions a store runs from start-up to serving, hottest
//!   first (made by `scripts/symbol-order.sh` from a callgrind profile). The linker lays them
//!   out side by side at the front of `.text`: the kernel maps a binary's code 64 KiB around
//!   each page fault, so code scattered over the whole binary made an idle store hold most of
//!   its 21 MiB of text. A name that no longer exists is skipped, not an error.
//! - `-z pack-relative-relocs` stores the position-independent binary's relocations as a
//!   bitmap (DT_RELR, glibc 2.36+) instead of 24 bytes each, which the loader reads in full
//!   at every start.

fn main() {
    let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("link/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!(
        "cargo:rustc-link-arg-bin=ferry=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=ferry=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rustc-link-arg-bin=ferry=-Wl,-z,pack-relative-relocs");
}
