//! The `hrx` binary as a user runs it: keygen → sign → verify, every test vector
//! through `hrx verify`, and one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hrx_tests::vectors;

fn hrx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hrx"))
        .args(args)
        // Errors must stay one line even when a user has backtraces on.
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the hrx binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fhir")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_sign_verify_accepts_an_observation_and_chains() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("district");
    let out = hrx(&["keygen", "--facility", "26012", "--out", s(&prefix)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key_id = stdout(&out).trim().to_owned();
    assert_eq!(key_id.len(), 64);
    let pubkey = dir.path().join("district.pub.json");
    assert!(std::fs::read_to_string(&pubkey).unwrap().contains(&key_id));

    let obs = fixture("observation-hba1c.json");
    let e1 = dir.path().join("e1.json");
    let key = dir.path().join("district.key.pem");
    let out = hrx(&[
        "sign",
        s(&obs),
        "--key",
        s(&key),
        "--facility",
        "26012",
        "--seq",
        "1",
        "--author",
        "CCHN-002614",
        "-o",
        s(&e1),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hash1 = stdout(&out).trim().to_owned();

    let out = hrx(&["verify", s(&e1), "--key", s(&pubkey)]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with("accepted: facility event"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(&hash1));

    // The next event, chained with --after; verified against its head.
    let e2 = dir.path().join("e2.json");
    let out = hrx(&[
        "sign",
        s(&obs),
        "--key",
        s(&key),
        "--facility",
        "26012",
        "--after",
        s(&e1),
        "--author",
        "CCHN-002614",
        "-o",
        s(&e2),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = hrx(&["verify", s(&e2), "--key", s(&pubkey), "--after", s(&e1)]);
    assert!(out.status.success(), "{}", stdout(&out));
    // Without its head, seq 2 is a gap.
    let out = hrx(&["verify", s(&e2), "--key", s(&pubkey)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("rejected: SEQUENCE_GAP"),
        "{}",
        stdout(&out)
    );
    // Resending the head is a duplicate.
    let out = hrx(&["verify", s(&e1), "--key", s(&pubkey), "--after", s(&e1)]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("duplicate"), "{}", stdout(&out));

    // One changed character of the payload: a bad signature.
    let text = std::fs::read_to_string(&e1).unwrap();
    let i = text.find("\"payload\": \"").unwrap() + 30;
    let mut bytes = text.into_bytes();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, bytes).unwrap();
    let out = hrx(&["verify", s(&tampered), "--key", s(&pubkey)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("rejected: BAD_SIGNATURE"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn sign_refuses_content_the_exchange_would_reject() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("k");
    assert!(
        hrx(&["keygen", "--facility", "26012", "--out", s(&prefix)])
            .status
            .success()
    );
    let out = hrx(&[
        "sign",
        s(&fixture("observation-hba1c.json")),
        "--key",
        s(&dir.path().join("k.key.pem")),
        "--facility",
        "26012",
        "--seq",
        "1",
        "--author",
        "x",
        "--kind",
        "CONDITION",
        "-o",
        s(&dir.path().join("e.json")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("record.body.resourceType"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("e.json").exists());
}

/// `hrx verify` judges what the envelope, the facility's keys and head and the receive
/// time show (steps 1–9 of the contract, 8b included); the facility facts of step 10 and
/// patient statements need the exchange's state, so the expected verdict is the one
/// through step 9, with the vector's clock bounds.
#[test]
fn verify_names_the_reason_of_every_vector() {
    let (_, all) = vectors::load().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut with_receive_time = 0;
    for v in &all {
        let Some(expected) =
            vectors::evaluate_through_content(v.envelope.to_envelope().unwrap(), &v.context)
                .unwrap()
        else {
            continue;
        };
        checked += 1;
        let env = dir.path().join(format!("{}.env", v.name));
        std::fs::write(
            &env,
            hrx_proto::codec::encode_envelope(&v.envelope.to_envelope().unwrap()),
        )
        .unwrap();
        let mut args: Vec<String> = vec!["verify".into(), s(&env).into()];
        // The clock bounds the vector's policy sets, if any.
        let policy = v.context.policy.clone().unwrap_or_default();
        if let Some(n) = policy.recorded_at_max_future_seconds {
            args.extend(["--recorded-at-max-future-secs".into(), n.to_string()]);
        }
        if let Some(n) = policy.recorded_at_max_past_seconds {
            args.extend(["--recorded-at-max-past-secs".into(), n.to_string()]);
        }
        for (i, k) in v.context.keys.iter().enumerate() {
            let p = dir.path().join(format!("{}-{i}.pub.json", v.name));
            std::fs::write(&p, serde_json::to_string(k).unwrap()).unwrap();
            args.extend(["--key".into(), s(&p).into()]);
        }
        if let Some(h) = &v.context.head {
            args.extend([
                "--head-seq".into(),
                h.seq.to_string(),
                "--head-hash".into(),
                h.event_hash.clone(),
                "--head-event-id".into(),
                h.event_id.clone(),
            ]);
            if let Some(t) = &h.recorded_at {
                args.extend(["--head-recorded-at".into(), t.clone()]);
            }
        }
        // The receive time the context gives, or the header's recorded_at; none when the
        // payload has no readable header (nothing then depends on it).
        if let Some(t) =
            vectors::received_at(&v.context, &v.envelope.to_envelope().unwrap()).unwrap()
        {
            with_receive_time += 1;
            args.extend(["--received-at".into(), t.to_rfc3339()]);
        }
        let out = hrx(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let text = stdout(&out);
        match expected.verdict.as_str() {
            "accepted" => {
                assert!(
                    out.status.success() && text.starts_with("accepted:"),
                    "{}: {text}",
                    v.name
                );
            }
            "duplicate" => {
                assert!(
                    out.status.success() && text.starts_with("duplicate:"),
                    "{}: {text}",
                    v.name
                );
            }
            _ => {
                assert_eq!(out.status.code(), Some(1), "{}: {text}", v.name);
                let reason = expected.reason.as_deref().unwrap();
                let want = match &expected.field {
                    Some(f) => format!("rejected: {reason} [{f}]:"),
                    None => format!("rejected: {reason}:"),
                };
                assert!(
                    text.starts_with(&want),
                    "{}: expected {want:?}, got {text:?}",
                    v.name
                );
            }
        }
    }
    assert!(checked > 50, "{checked} vectors checked");
    assert!(
        with_receive_time > 40,
        "{with_receive_time} with a receive time"
    );
}

#[test]
fn errors_are_one_line_without_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.env");
    std::fs::write(&garbage, [0xff, 0x00, 0x13, 0x37]).unwrap();
    let key = dir.path().join("k");
    assert!(
        hrx(&["keygen", "--facility", "26012", "--out", s(&key)])
            .status
            .success()
    );
    let pubkey = dir.path().join("k.pub.json");

    // Garbage envelope: a rejection, not a crash.
    let out = hrx(&["verify", s(&garbage), "--key", s(&pubkey)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("rejected: MALFORMED_ENVELOPE"),
        "{}",
        stdout(&out)
    );

    for args in [
        vec!["verify", "/nonexistent/e.json", "--key", s(&pubkey)],
        vec!["verify", s(&garbage), "--key", s(&garbage)],
        vec!["keygen", "--facility", "2601", "--out", s(&key)],
        vec!["keygen", "--facility", "26012", "--out", s(&key)], // exists already
    ] {
        let out = hrx(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("hrx: error: "), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}
