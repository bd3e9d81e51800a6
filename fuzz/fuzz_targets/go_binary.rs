//! Arbitrary bytes through the agent's readers of Go executables: the
//! function table (`.gopclntab`), the build info, the `RET` finder, the
//! DWARF reader, and the whole-file inspection. A traced container can
//! hold any file: none may panic, loop or allocate without bound.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zerospan::fuzzing::go_binary_readers(data));
