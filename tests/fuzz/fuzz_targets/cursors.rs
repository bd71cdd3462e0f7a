//! The cursors clients send back: timeline pages, follow streams, access pages.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = hrx_timeline::cursor::decode_timeline(s);
    let _ = hrx_timeline::cursor::decode_follow(s);
    let _ = hrx_consent::core::access_cursor(s);
});
