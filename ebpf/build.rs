// Rebuild the probes when bpf-linker changes: it is the probes' real linker.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
