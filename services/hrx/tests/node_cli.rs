//! The node as a user runs it: `hrx demo`, `hrx serve` with `hrx registry` and
//! `hrx emit` against it, and `hrx reproject` giving identical projections.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hrx_domain::PatientId;
use hrx_embedded::SqliteNode;
use hrx_ports::{ConsentStore, MonitorStore, RegistryStore, TimelineQuery, TimelineStore};

fn hrx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hrx"));
    c.env("RUST_LOG", "error");
    c
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("hrx runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Everything projected, as text, for comparison.
fn snapshot(dir: &Path) -> String {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let db = SqliteNode::open(dir).unwrap();
        let mut out = String::new();
        for p in ["026062001234", "026185004321", "026070009876"] {
            let patient = PatientId::parse(p).unwrap();
            let q = TimelineQuery {
                patient_id: patient.clone(),
                kinds: vec![],
                facilities: vec![],
                occurred_from: None,
                occurred_until: None,
                after: None,
                limit: 1000,
            };
            out += &format!("{:?}\n", db.timeline(&q).await.unwrap());
            out += &format!("{:?}\n", db.consent_events(&patient).await.unwrap());
            out += &format!("{:?}\n", db.break_glass(&patient).await.unwrap());
        }
        out += &format!("{:?}\n", db.facilities().await.unwrap());
        out += &format!("{:?}\n", db.keys(None).await.unwrap());
        out += &format!("{:?}\n", db.facility_stats().await.unwrap());
        out += &format!("{:?}\n", db.rejections(None, 1000).await.unwrap());
        out
    })
}

#[test]
fn demo_tells_the_story_and_reproject_rebuilds_identical_projections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let out = run(hrx().args(["demo", "--keep"]).arg(&data));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "without consent: PermissionDenied, no records and no counts",
        "shows it pending",
        "approves with their own key",
        "with consent: 5 records shown, 0 withheld",
        "patient-signed …",
        "a self-attested grant: refused, NO_STANDING",
        "a grant to any facility: refused, ATTESTED_GRANT_OUT_OF_BOUNDS",
        "365 days: refused, ATTESTED_GRANT_OUT_OF_BOUNDS",
        "live: OBSERVATION HbA1c",
        "alert at the National Center",
        "EMERGENCY reads only: 7 records shown",
        "a second window for the same patient: refused, BREAK_GLASS_LIMIT",
        "enrolled in person at 26012",
        "REFUSED",
        "FOLLOW_DELIVERY        5 record(s)",
        "FOLLOW_DELIVERY        1 record(s)",
        "attested grant …",
        "INVALID_FIELD 1",
        "the node stopped cleanly",
    ] {
        assert!(
            text.contains(expected),
            "demo output lacks {expected:?}:\n{text}"
        );
    }
    let before = snapshot(&data);
    assert!(
        before.contains("Observation") || before.contains("OBSERVATION") || before.len() > 1000
    );
    let out = run(hrx().args(["reproject", "--data-dir"]).arg(&data));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reprojected"));
    let after = snapshot(&data);
    assert_eq!(before, after, "reproject must give identical projections");
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_registry_emit_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let config = dir.path().join("hrx.toml");
    std::fs::write(
        &config,
        "heartbeat_ms = 1000\nmetrics_addr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut serve = Serve(
        hrx()
            .args(["serve", "--config"])
            .arg(&config)
            .env("HRX_DATA_DIR", &data)
            .env("HRX_GRPC_ADDR", "127.0.0.1:0")
            .env("HRX_PATIENT_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(&data.join("node.json"));

    let out = run(hrx().args([
        "registry",
        "--data-dir",
        data.to_str().unwrap(),
        "facility",
        "add",
        "--id",
        "26012",
        "--name",
        "Trung tâm Y tế khu vực Vĩnh Tường",
        "--province",
        "Phú Thọ",
        "--level",
        "basic",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("registered facility 26012"));
    let out = run(hrx().args([
        "registry",
        "--data-dir",
        data.to_str().unwrap(),
        "facility",
        "list",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("26012  BASIC"));

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fhir/observation-hba1c.json");
    let out = run(hrx()
        .args([
            "emit",
            "--data-dir",
            data.to_str().unwrap(),
            "--facility",
            "26012",
            "--author",
            "CCHN-002614",
        ])
        .arg(&fixture)
        .arg(&fixture));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(": accepted at 0:").count(), 2, "{text}");

    // Key rotation: a new key becomes the facility's signing key; the old one is then
    // revoked; emitting goes on with the new key.
    let out = run(hrx().args([
        "registry",
        "--data-dir",
        data.to_str().unwrap(),
        "key",
        "add",
        "--facility",
        "26012",
    ]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("now the facility's signing key"), "{text}");
    let out = run(hrx().args([
        "registry",
        "--data-dir",
        data.to_str().unwrap(),
        "facility",
        "list",
    ]));
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let keys: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("key "))
        .map(|l| &l[..64])
        .collect();
    assert_eq!(keys.len(), 2, "{listing}");
    let new_key = text.split_whitespace().nth(2).unwrap().to_owned();
    let old_key = keys.iter().find(|k| **k != new_key).unwrap().to_string();
    run(hrx().args([
        "registry",
        "--data-dir",
        data.to_str().unwrap(),
        "key",
        "revoke",
        "--key-id",
        &old_key,
        "--reason",
        "rotated",
    ]));
    let out = run(hrx().args([
        "registry",
        "--data-dir",
        data.to_str().unwrap(),
        "facility",
        "list",
    ]));
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listing.contains(&format!("key {old_key}  revoked")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("key {new_key}  active")),
        "{listing}"
    );
    let out = run(hrx()
        .args([
            "emit",
            "--data-dir",
            data.to_str().unwrap(),
            "--facility",
            "26012",
            "--author",
            "CCHN-002614",
        ])
        .arg(&fixture));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": accepted at 0:"));

    // A facility that is not registered has no key: one clear error.
    let out = hrx()
        .args([
            "emit",
            "--data-dir",
            data.to_str().unwrap(),
            "--facility",
            "26001",
            "--author",
            "x",
        ])
        .arg(&fixture)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );

    // SIGTERM stops it cleanly and removes node.json.
    let status = Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = serve.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(!data.join("node.json").exists());
    let mut stdout = String::new();
    std::io::Read::read_to_string(serve.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(stdout.contains("national root key"), "{stdout}");
    assert!(stdout.contains("gRPC (mutual TLS)"), "{stdout}");

    let out = run(hrx().args(["reproject", "--data-dir", data.to_str().unwrap()]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reprojected 7 log entries"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `hrx registry cert`: a facility's certificate revoked by the file (the serial as
/// OpenSSL reads it) is refused within seconds; a renewed one works again.
#[test]
fn a_revoked_certificate_is_refused_and_a_renewed_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let _serve = Serve(
        hrx()
            .arg("serve")
            .env("HRX_DATA_DIR", &data)
            .env("HRX_GRPC_ADDR", "127.0.0.1:0")
            .env("HRX_PATIENT_ADDR", "127.0.0.1:0")
            .env("HRX_METRICS_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&data.join("node.json"));
    let d = data.to_str().unwrap();
    run(hrx().args([
        "registry",
        "--data-dir",
        d,
        "facility",
        "add",
        "--id",
        "26012",
        "--name",
        "H",
        "--province",
        "Phú Thọ",
        "--level",
        "basic",
    ]));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fhir/observation-hba1c.json");
    let emit = || {
        hrx()
            .args([
                "emit",
                "--data-dir",
                d,
                "--facility",
                "26012",
                "--author",
                "CCHN-002614",
            ])
            .arg(&fixture)
            .output()
            .unwrap()
    };
    assert!(emit().status.success());

    let cert = data.join("tls/facilities/26012.pem");
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(openssl.status.success());
    let serial = String::from_utf8_lossy(&openssl.stdout)
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches("00")
        .to_lowercase();
    let out = run(hrx()
        .args([
            "registry",
            "--data-dir",
            d,
            "cert",
            "revoke",
            "--reason",
            "laptop lost",
            "--cert",
        ])
        .arg(&cert));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("revoked certificate {serial}")),
        "{text} / {serial}"
    );

    let started = Instant::now();
    loop {
        let out = emit();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("revoked"), "{err}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still accepted 10 s after the revocation"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = run(hrx().args([
        "registry",
        "--data-dir",
        d,
        "cert",
        "renew",
        "--facility",
        "26012",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("new certificate"), "{text}");
    let new_serial = text
        .split("new certificate ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .unwrap();
    assert_ne!(new_serial, serial, "a new serial: {text}");
    let out = emit();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The patient's app in CLI form against `hrx serve`: a key of their own, enrolled at
/// the district hospital; a grant signed with it; the access list; a revocation.
#[test]
fn patient_cli_enrolls_grants_revokes_and_lists_accesses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let _serve = Serve(
        hrx()
            .arg("serve")
            .env("HRX_DATA_DIR", &data)
            .env("HRX_GRPC_ADDR", "127.0.0.1:0")
            .env("HRX_PATIENT_ADDR", "127.0.0.1:0")
            .env("HRX_METRICS_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&data.join("node.json"));
    let d = data.to_str().unwrap();
    for (id, level) in [("26012", "basic"), ("26001", "specialized")] {
        run(hrx().args([
            "registry",
            "--data-dir",
            d,
            "facility",
            "add",
            "--id",
            id,
            "--name",
            "H",
            "--province",
            "Phú Thọ",
            "--level",
            level,
        ]));
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fhir/observation-hba1c.json");
    run(hrx()
        .args([
            "emit",
            "--data-dir",
            d,
            "--facility",
            "26012",
            "--author",
            "CCHN-002614",
        ])
        .arg(&fixture));
    let patient = String::from_utf8_lossy(&std::fs::read(&fixture).unwrap())
        .split("Patient/")
        .nth(1)
        .map(|s| s[..12].to_owned())
        .expect("the fixture names its patient");

    let key = dir.path().join("an");
    let out = run(hrx()
        .args(["patient", "keygen", "--patient", &patient, "--out"])
        .arg(&key));
    let key_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(key_id.len(), 64);
    let key_pem = dir.path().join("an.key.pem");
    let k = key_pem.to_str().unwrap();
    let out = run(hrx().args([
        "patient",
        "enroll",
        "--data-dir",
        d,
        "--facility",
        "26012",
        "--key",
        k,
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("key {key_id} is the patient's now")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(hrx().args([
        "patient",
        "grant",
        "--data-dir",
        d,
        "--key",
        k,
        "--to",
        "26001",
        "--purpose",
        "referral",
        "--days",
        "30",
    ]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(": accepted"), "{text}");
    let grant = text
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let out = run(hrx().args(["patient", "requests", "--data-dir", d, "--key", k]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no consent requests waiting"));
    let out = run(hrx().args(["patient", "accesses", "--data-dir", d, "--key", k]));
    let view = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(view.contains("enrolled in person at 26012"), "{view}");
    assert!(
        view.contains(&format!(
            "{grant}  patient-signed to 26001 for REFERRAL  active"
        )),
        "{view}"
    );
    assert!(
        view.contains("PATIENT_VIEW"),
        "the earlier views are audited: {view}"
    );
    let out = run(hrx().args(["patient", "revoke", &grant, "--data-dir", d, "--key", k]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": accepted"));
    // Revoking what the patient does not have: exit 1 and the typed reason.
    let out = hrx()
        .args([
            "patient",
            "revoke",
            "01a23556-4942-7005-a6f0-27ff36b2f5c4",
            "--data-dir",
            d,
            "--key",
            k,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rejected NOT_GRANTOR"));
}
