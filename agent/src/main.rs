//! The `zerospan` command (see the library's `cli`).

fn main() -> std::process::ExitCode {
    zerospan::cli()
}
