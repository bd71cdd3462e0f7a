//! An ingest report read back from the log (written by the exchange; anything with
//! access to the log could write other bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = hrx_proto::codec::decode_ingest_report(data) {
        // What decodes, encodes back to a report equal to it.
        let again = hrx_proto::codec::decode_ingest_report(
            &hrx_proto::codec::encode_ingest_report(&report),
        )
        .expect("a report the exchange encodes decodes");
        assert_eq!(again, report);
    }
});
