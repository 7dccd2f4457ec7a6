#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gossipkv_fuzz_targets::sealed(data));
