//! Fixed inputs shared by the fuzz targets, read from the project's own test
//! vectors (`testdata/`) so the seeds in `fuzz/corpus/` open, verify and
//! parse, and the fuzzer starts from the deep end of every code path.

#![allow(dead_code)]

use std::sync::LazyLock;

use serde_json::Value;

pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

pub fn hex32(s: &str) -> [u8; 32] {
    hex(s).try_into().expect("32 bytes")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("testdata is JSON")
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("testdata field {key}"))
}

pub static FRAMES: LazyLock<Value> =
    LazyLock::new(|| json(include_str!("../../../testdata/frames.json")));
pub static KEY_INIT: LazyLock<Value> =
    LazyLock::new(|| json(include_str!("../../../testdata/key_init.json")));
pub static SCRAM: LazyLock<Value> =
    LazyLock::new(|| json(include_str!("../../../testdata/scram.json")));

/// The client→server traffic key of `frames.json`.
pub fn c2s_key() -> [u8; 32] {
    hex32(str_of(&FRAMES, "c2s_key_hex"))
}

/// The SCRAM test cases.
pub fn scram_cases() -> &'static [Value] {
    SCRAM["cases"].as_array().expect("scram cases")
}

/// Splits at the first occurrence of `sep` (the rest may be empty).
pub fn split2(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
