//! The node configuration: a TOML document and `HRX_*` variables, merged and checked
//! as a process does before it starts. Configuration is written by operators, not by
//! attackers, but a typo must be an error message, never a panic or a process that
//! starts with a setting it did not understand.
//!
//! Input: the TOML text, then after the first NUL byte the environment, one
//! `NAME=value` per line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env = env.lines().filter_map(|l| l.split_once('='));
    if let Ok(config) = hrx_config::NodeConfig::from_sources(toml, env) {
        let _ = config.validate();
    }
});
