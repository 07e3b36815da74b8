//! Configuration parsing: `FileConfig::from_toml` then `Config::from_file`
//! on arbitrary text. Never panics; a config that validates respects every
//! documented range, and every error names something to fix.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wsgate_server::config::{Config, FileConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match FileConfig::from_toml(text, Path::new("fuzz.toml")) {
        Ok(file) => file,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    match Config::from_file(file) {
        Ok(config) => {
            let l = &config.limits;
            assert!((16..=1024).contains(&l.max_name_len));
            assert!((1..=4096).contains(&l.max_in_flight));
            assert!(l.ping_interval < l.idle_timeout);
            assert!(config.login.iterations >= wsgate_proto::scram::MIN_ITERATIONS);
            assert!(
                config.routes.lookup("sys.echo").is_some()
                    || config.routes.lookup("sys.echo").is_none()
            );
            for name in ["sys.echo", "sys.whoami", "a", "a.b", "a.b.c", ""] {
                let _ = config.routes.lookup(name);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
