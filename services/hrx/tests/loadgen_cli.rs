//! `hrx loadgen` as an operator runs it: `presign` writes reproducible files that decode
//! as signed chains; `run --from` against a real `hrx serve` has every event accepted,
//! a second run reports every event as a duplicate (nothing doubled in the log), the
//! same population signed on the fly is the same bytes, and `--rate` paces the load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hrx_domain::{Envelope, FacilityId, PublicKey, Sha256};
use hrx_embedded::SqliteNode;
use hrx_ports::MonitorStore;
use hrx_proto::v1;
use prost::Message as _;
use serde_json::Value;

fn hrx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hrx"));
    c.env("RUST_LOG", "error");
    c
}

fn run(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("hrx runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The small population of these tests: a chronic patient of 300 records and a few
/// others, three facilities (one of each level).
const POPULATION: [&str; 12] = [
    "--seed",
    "42",
    "--facilities",
    "3",
    "--patients",
    "30",
    "--chronic",
    "1",
    "--chronic-records",
    "300",
    "--records-per-patient",
    "3",
];

fn presign(out: &Path) -> String {
    run(hrx()
        .args(["loadgen", "presign", "--out"])
        .arg(out)
        .args(POPULATION))
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// Decodes a chain file independently of hrx-bench's reader: prost's own
/// length-delimited decoding, message after message.
fn decode_chain(bytes: &[u8]) -> Vec<Envelope> {
    let mut buf = bytes;
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(Envelope::from(
            v1::SignedEnvelope::decode_length_delimited(&mut buf).unwrap(),
        ));
    }
    out
}

/// The count on an output line `NAME   N …`.
fn count(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{text}"))
}

#[test]
fn presign_writes_reproducible_signed_chains() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let text = presign(&a);
    // Signed at the start of today (UTC), for every presign made today.
    let signed = manifest(&a)["recorded_at"].as_str().unwrap().to_owned();
    assert!(signed.ends_with("T00:00:00Z"), "{signed}");
    assert!(
        text.contains("3 facilities (1 initial, 1 basic, 1 specialized)"),
        "{text}"
    );
    run(hrx()
        .args(["loadgen", "presign", "--out"])
        .arg(&b)
        .args(POPULATION)
        .args(["--signed-at", &signed]));
    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (path, bytes) in &ta {
        assert!(
            bytes == &tb[path],
            "{} differs between two presigns",
            path.display()
        );
    }

    let m = manifest(&a);
    assert_eq!(m["format"], "hrx-loadgen/1");
    assert_eq!(m["spec"]["seed"], 42);
    let facilities = m["facilities"].as_array().unwrap();
    assert_eq!(facilities.len(), 3);
    let mut total = 0;
    let mut sizes = Vec::new();
    for f in facilities {
        let id = f["id"].as_str().unwrap();
        let key = PublicKey::from_slice(&hex_decode(f["public_key"].as_str().unwrap())).unwrap();
        assert_eq!(key.key_id().to_string(), f["key_id"].as_str().unwrap());
        let envelopes = decode_chain(&ta[Path::new(f["chain"].as_str().unwrap())]);
        assert_eq!(envelopes.len() as u64, f["events"].as_u64().unwrap());
        let mut prev = Sha256::ZERO;
        for (i, e) in envelopes.iter().enumerate() {
            key.verify(e).unwrap();
            let event = v1::FacilityEvent::decode(e.payload.as_slice()).unwrap();
            let h = event.header.unwrap();
            assert_eq!(h.facility_id, id);
            assert_eq!(h.seq, i as u64 + 1);
            assert_eq!(h.prev_hash, prev.as_bytes().to_vec());
            prev = e.event_hash();
            let Some(v1::facility_event::Body::Record(r)) = event.body else {
                panic!("a record body");
            };
            assert_eq!(r.content_type, "application/fhir+json");
            sizes.push(r.body.len());
        }
        assert_eq!(prev.to_hex(), f["head_hash"].as_str().unwrap());
        total += envelopes.len() as u64;
        let pem = String::from_utf8(ta[Path::new(f["key"].as_str().unwrap())].clone()).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }
    assert_eq!(m["events"].as_u64().unwrap(), total);
    assert!(
        total >= 300 + 29,
        "the chronic patient's 300 records and the others'"
    );
    assert!(
        sizes.iter().all(|s| (500..=4096).contains(s)),
        "FHIR bodies of 0.5–4 KB"
    );

    // Another seed, another population; and a directory is never overwritten.
    let c = dir.path().join("c");
    run(hrx().args(["loadgen", "presign", "--out"]).arg(&c).args([
        "--seed",
        "43",
        "--facilities",
        "3",
        "--patients",
        "30",
    ]));
    assert_ne!(manifest(&c)["facilities"], m["facilities"]);
    let out = hrx()
        .args(["loadgen", "presign", "--out"])
        .arg(&a)
        .args(POPULATION)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a population"));
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

struct Serve(Child);

impl Serve {
    fn start(data: &Path) -> Self {
        let serve = Serve(
            hrx()
                .arg("serve")
                .env("HRX_DATA_DIR", data)
                .env("HRX_GRPC_ADDR", "127.0.0.1:0")
                .env("HRX_PATIENT_ADDR", "127.0.0.1:0")
                .env("HRX_METRICS_ADDR", "127.0.0.1:0")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let node_file = data.join("node.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !node_file.exists() {
            assert!(Instant::now() < deadline, "hrx serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    /// SIGTERM, and waits for the graceful stop.
    fn stop(mut self) {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "hrx serve did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_submits_once_then_reports_duplicates_and_rate_paces() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let pop = dir.path().join("pop");
    presign(&pop);
    let m = manifest(&pop);
    let events = m["events"].as_u64().unwrap();
    let serve = Serve::start(&data);
    let load = |extra: &[&str]| {
        run(hrx()
            .args(["loadgen", "run", "--data-dir"])
            .arg(&data)
            .args(extra))
    };
    let from = ["--from", pop.to_str().unwrap(), "--batch", "25"];

    let first = load(&from);
    assert!(
        first.contains("registry: 3 facilities registered"),
        "{first}"
    );
    assert_eq!(count(&first, "accepted"), events, "{first}");
    assert_eq!(count(&first, "duplicate"), 0, "{first}");
    assert_eq!(count(&first, "rejected"), 0, "{first}");
    assert!(
        first.contains("events/s") && first.contains("p99"),
        "{first}"
    );

    // Again: the registry is left alone and every event is a duplicate.
    let second = load(&from);
    assert!(second.contains("3 already registered"), "{second}");
    assert_eq!(count(&second, "accepted"), 0, "{second}");
    assert_eq!(count(&second, "duplicate"), events, "{second}");
    assert_eq!(count(&second, "rejected"), 0, "{second}");

    // The same population signed on the fly (at the presign's time, which is the start
    // of the day by default) is the same bytes: duplicates too.
    let signed_at = m["recorded_at"].as_str().unwrap();
    let fly = load(
        &[
            &POPULATION[..],
            &["--concurrency", "2", "--signed-at", signed_at],
        ]
        .concat(),
    );
    assert!(fly.contains("signed on the fly"), "{fly}");
    assert_eq!(count(&fly, "duplicate"), events, "{fly}");
    assert_eq!(count(&fly, "rejected"), 0, "{fly}");

    // At a rate: another population (its own facilities), ~100 events at 200/s in
    // batches of 5 cannot finish before its last batch is due, (n - 5) / 200 s in.
    let started = Instant::now();
    let paced = load(&[
        "--seed",
        "7",
        "--facilities",
        "2",
        "--patients",
        "20",
        "--chronic",
        "1",
        "--chronic-records",
        "60",
        "--records-per-patient",
        "2",
        "--rate",
        "200",
        "--batch",
        "5",
    ]);
    let wall = started.elapsed();
    let paced_events = count(&paced, "accepted");
    assert!(paced_events >= 80, "{paced}");
    assert_eq!(count(&paced, "rejected"), 0, "{paced}");
    let floor = Duration::from_secs_f64((paced_events - 5) as f64 / 200.0);
    assert!(
        wall >= floor,
        "{paced_events} events at 200/s took {wall:?}"
    );
    let elapsed: f64 = paced
        .lines()
        .find_map(|l| l.strip_prefix("elapsed"))
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(elapsed >= floor.as_secs_f64(), "{paced}");

    // Nothing doubled: rebuilt from the log, each facility's chain has its events once.
    serve.stop();
    run(hrx().args(["reproject", "--data-dir"]).arg(&data));
    let stats = tokio::runtime::Runtime::new().unwrap().block_on(async {
        SqliteNode::open(&data)
            .unwrap()
            .facility_stats()
            .await
            .unwrap()
    });
    for f in m["facilities"].as_array().unwrap() {
        let id = FacilityId::parse(f["id"].as_str().unwrap()).unwrap();
        let s = stats
            .iter()
            .find(|s| s.facility_id == id)
            .expect("the facility has stats");
        let n = f["events"].as_u64().unwrap();
        assert_eq!((s.accepted, s.head_seq), (n, n), "facility {id}");
        assert!(s.rejected.is_empty(), "facility {id}: {:?}", s.rejected);
    }
}
