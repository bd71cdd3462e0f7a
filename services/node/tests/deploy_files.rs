//! The deployment files in `deploy/` name only what hrx has.
//!
//! `deploy/compose.yaml` and every manifest in `deploy/k8s/` are parsed, and:
//! - every `HRX_*` name they contain (environment keys, ConfigMap keys, and any mention
//!   in a command or value) is one of [`ENV_VARS`]; so are those in `OPERATIONS.md` and
//!   the `Dockerfile`;
//! - every role (`--role` arguments, `HRX_ROLES` values) is one of [`Role::ALL`], every
//!   `hrx serve` names its roles, and every role is run somewhere;
//! - every port that a health check, a probe, a published port, a Service or a
//!   Prometheus annotation targets is the port of the `HRX_GRPC_ADDR` or
//!   `HRX_METRICS_ADDR` that the container is given (directly, through a named
//!   containerPort, or through a ConfigMap), and a gRPC health check asks only for the
//!   services of that container's roles.
//!
//! The checker is run on small in-memory files too, so that a typo is shown to fail it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};

use hrx_node::config::{ENV_VARS, Role, SECRET_ENV_VARS};
use serde::Deserialize as _;
use serde_norway::Value;

// ---------------------------------------------------------------- the files

/// Whether hrx reads the variable `name` (configuration or a secret).
fn reads(name: &str) -> bool {
    ENV_VARS.contains(&name) || SECRET_ENV_VARS.contains(&name)
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kubernetes_files() -> Vec<(String, String)> {
    let dir = deploy_dir().join("k8s");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .map(|p| {
            let name = format!("k8s/{}", p.file_name().unwrap().to_string_lossy());
            (name, read(&p))
        })
        .collect();
    files.sort();
    files
}

fn assert_clean(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn compose_names_only_real_roles_ports_and_variables() {
    let findings = check_compose("compose.yaml", &read(&deploy_dir().join("compose.yaml")));
    assert_clean("compose.yaml", &findings.problems);
    assert_eq!(
        findings.roles,
        Role::ALL.into_iter().collect::<BTreeSet<_>>(),
        "compose.yaml must run every role"
    );
}

#[test]
fn kubernetes_manifests_name_only_real_roles_ports_and_variables() {
    let files = kubernetes_files();
    assert!(
        files.len() >= 5,
        "expected the manifests in deploy/k8s/, found {}",
        files.len()
    );
    let findings = check_kubernetes(&files);
    assert_clean("deploy/k8s", &findings.problems);
    assert_eq!(
        findings.roles,
        Role::ALL.into_iter().collect::<BTreeSet<_>>(),
        "the manifests must run every role"
    );
    for kind in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Job",
        "PodDisruptionBudget",
    ] {
        assert!(findings.kinds.contains(kind), "no {kind} in deploy/k8s");
    }
}

#[test]
fn operations_guide_and_dockerfile_name_only_real_variables() {
    for name in ["OPERATIONS.md", "Dockerfile"] {
        let mut findings = Findings::default();
        for token in hrx_tokens(&read(&deploy_dir().join(name))) {
            if !reads(&token) {
                findings.problem(name, format!("names {token}, which hrx does not read"));
            }
        }
        assert_clean(name, &findings.problems);
    }
}

// ---------------------------------------------------------------- the checker fails on typos

const COMPOSE_OK: &str = r#"
x-env: &env
  HRX_BACKEND: distributed
  HRX_KAFKA_BROKERS: kafka:9092
  HRX_GRPC_ADDR: 0.0.0.0:7443
  HRX_METRICS_ADDR: 0.0.0.0:9464
services:
  kafka:
    image: apache/kafka
    healthcheck:
      test: ["CMD-SHELL", "true"]
  ingest:
    image: hrx
    command: ["serve", "--role", "ingest"]
    environment: *env
    ports: ["7443:7443", "127.0.0.1:9464:9464"]
    depends_on:
      kafka:
        condition: service_healthy
    healthcheck:
      test: ["CMD", "grpc_health_probe", "-addr=127.0.0.1:7443", "-tls", "-service=hrx.v1.IngestService"]
"#;

#[test]
fn checker_accepts_a_correct_compose_snippet() {
    let findings = check_compose("snippet", COMPOSE_OK);
    assert_clean("correct snippet", &findings.problems);
    assert_eq!(findings.roles, BTreeSet::from([Role::Ingest]));
}

#[test]
fn checker_reports_typos_in_compose() {
    let cases: &[(&str, &str, &str)] = &[
        ("HRX_KAFKA_BROKERS", "HRX_KAFKA_BROKER", "HRX_KAFKA_BROKER"),
        (r#""--role", "ingest""#, r#""--role", "ingset""#, "ingset"),
        ("-addr=127.0.0.1:7443", "-addr=127.0.0.1:7444", "7444"),
        ("\"7443:7443\"", "\"7443:7433\"", "7433"),
        (
            "hrx.v1.IngestService",
            "hrx.v1.TimelineService",
            "hrx.v1.TimelineService",
        ),
        (
            "condition: service_healthy",
            "condition: service_heathy",
            "service_heathy",
        ),
    ];
    for (right, wrong, reported) in cases {
        assert!(COMPOSE_OK.contains(right), "{right}");
        let snippet = COMPOSE_OK.replacen(right, wrong, 1);
        let findings = check_compose("snippet", &snippet);
        assert!(
            findings.problems.iter().any(|p| p.contains(reported)),
            "{wrong:?} was not reported; problems: {:#?}",
            findings.problems
        );
    }
}

const KUBERNETES_OK: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: common}
data:
  HRX_GRPC_ADDR: 0.0.0.0:7443
  HRX_METRICS_ADDR: 0.0.0.0:9464
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hrx-timeline}
spec:
  selector:
    matchLabels: {app: timeline}
  template:
    metadata:
      labels: {app: timeline, tier: hrx}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "9464"
    spec:
      containers:
        - name: hrx
          image: hrx
          args: ["serve"]
          envFrom:
            - configMapRef: {name: common}
          env:
            - name: HRX_ROLES
              value: timeline,consent
          ports:
            - {name: grpc, containerPort: 7443}
            - {name: metrics, containerPort: 9464}
          readinessProbe:
            exec:
              command: [grpc_health_probe, -addr, "127.0.0.1:7443", -service=hrx.v1.ConsentService]
          livenessProbe:
            grpc: {port: 7443}
          startupProbe:
            httpGet: {path: /metrics, port: metrics}
---
apiVersion: v1
kind: Service
metadata: {name: hrx-timeline}
spec:
  selector: {app: timeline}
  ports:
    - {name: grpc, port: 443, targetPort: grpc}
    - {name: metrics, port: 9464}
"#;

#[test]
fn checker_accepts_a_correct_kubernetes_snippet() {
    let findings = check_kubernetes(&[("snippet".into(), KUBERNETES_OK.into())]);
    assert_clean("correct snippet", &findings.problems);
    assert_eq!(
        findings.roles,
        BTreeSet::from([Role::Timeline, Role::Consent])
    );
}

#[test]
fn checker_reports_typos_in_kubernetes_manifests() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "HRX_METRICS_ADDR: 0.0",
            "HRX_METRIC_ADDR: 0.0",
            "HRX_METRIC_ADDR",
        ),
        (
            "value: timeline,consent",
            "value: timeline,consnet",
            "consnet",
        ),
        ("grpc: {port: 7443}", "grpc: {port: 7444}", "7444"),
        ("targetPort: grpc}", "targetPort: grcp}", "grcp"),
        (
            r#"prometheus.io/port: "9464""#,
            r#"prometheus.io/port: "9465""#,
            "9465",
        ),
        ("port: metrics}", "port: grpc}", "7443"),
        (
            "name: common}\n          env",
            "name: commons}\n          env",
            "commons",
        ),
        (
            "selector: {app: timeline}",
            "selector: {app: timelines}",
            "selects no pod",
        ),
        (
            "-service=hrx.v1.ConsentService",
            "-service=hrx.v1.MonitorService",
            "MonitorService",
        ),
        (
            r#"args: ["serve"]"#,
            r#"args: ["serve", "--role=projector,"]"#,
            "",
        ),
    ];
    for (right, wrong, reported) in cases {
        assert!(KUBERNETES_OK.contains(right), "{right}");
        let snippet = KUBERNETES_OK.replacen(right, wrong, 1);
        let findings = check_kubernetes(&[("snippet".into(), snippet)]);
        if reported.is_empty() {
            // A harmless change (a trailing comma) must stay clean.
            assert_clean(wrong, &findings.problems);
        } else {
            assert!(
                findings.problems.iter().any(|p| p.contains(reported)),
                "{wrong:?} was not reported; problems: {:#?}",
                findings.problems
            );
        }
    }
}

// ---------------------------------------------------------------- findings

#[derive(Default, Debug)]
struct Findings {
    problems: Vec<String>,
    /// Roles run by some container.
    roles: BTreeSet<Role>,
    /// Kubernetes kinds seen.
    kinds: BTreeSet<String>,
}

impl Findings {
    fn problem(&mut self, at: &str, message: impl Display) {
        self.problems.push(format!("{at}: {message}"));
    }
}

/// Parses every document of a YAML file, with `<<` merge keys applied.
fn parse_documents(name: &str, text: &str, findings: &mut Findings) -> Vec<Value> {
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        match Value::deserialize(de) {
            Ok(mut v) => {
                if let Err(e) = v.apply_merge() {
                    findings.problem(name, format!("merge keys: {e}"));
                }
                if !v.is_null() {
                    docs.push(v);
                }
            }
            Err(e) => {
                findings.problem(name, format!("not YAML: {e}"));
                break;
            }
        }
    }
    docs
}

/// The `HRX_…` names in a text: `HRX_` in upper case, not part of a longer name.
fn hrx_tokens(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_';
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(found) = text[i..].find("HRX_") {
        let start = i + found;
        let mut end = start + 4;
        while end < bytes.len() && is_name(bytes[end]) {
            end += 1;
        }
        let glued_before =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        // `HRX_` alone (as in "HRX_*") names no variable.
        if !glued_before && end > start + 4 {
            tokens.push(text[start..end].trim_end_matches('_').to_owned());
        }
        i = end;
    }
    tokens
}

/// Reports every `HRX_*` name anywhere in `v` (keys and strings) that hrx does not read.
fn check_hrx_names(at: &str, v: &Value, findings: &mut Findings) {
    let mut stack = vec![(at.to_owned(), v)];
    while let Some((path, v)) = stack.pop() {
        match v {
            Value::String(s) => {
                for token in hrx_tokens(s) {
                    if !reads(&token) {
                        findings.problem(&path, format!("names {token}, which hrx does not read"));
                    }
                }
            }
            Value::Sequence(seq) => {
                for (i, item) in seq.iter().enumerate() {
                    stack.push((format!("{path}[{i}]"), item));
                }
            }
            Value::Mapping(map) => {
                for (k, item) in map {
                    let key = scalar(k).unwrap_or_default();
                    for token in hrx_tokens(&key) {
                        if !reads(&token) {
                            findings.problem(
                                &format!("{path}.{key}"),
                                format!("sets {token}, which hrx does not read"),
                            );
                        }
                    }
                    stack.push((format!("{path}.{key}"), item));
                }
            }
            Value::Tagged(t) => stack.push((path, &t.value)),
            _ => {}
        }
    }
}

/// A scalar as text (numbers and booleans too, as YAML writes them).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(seq)) => seq.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Vec::new(),
    }
}

fn port_number(s: &str) -> Option<u16> {
    s.trim().parse().ok()
}

/// The port of a `host:port` address.
fn addr_port(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| port_number(p))
}

// ---------------------------------------------------------------- containers

/// Which listener a port must be.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Listener {
    Grpc,
    Metrics,
    Either,
}

/// A port as a probe or a Service names it.
#[derive(Clone, Debug)]
enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    fn from_value(v: &Value) -> Option<PortRef> {
        let s = scalar(v)?;
        Some(match port_number(&s) {
            Some(n) => PortRef::Number(n),
            None => PortRef::Name(s),
        })
    }
}

/// One container (a compose service or a Kubernetes container), as hrx would see it.
#[derive(Debug, Default)]
struct Container {
    at: String,
    /// Its environment; `None` for a value hrx reads from elsewhere (a secret).
    env: BTreeMap<String, Option<String>>,
    /// Command and arguments, one word each.
    words: Vec<String>,
    /// Kubernetes containerPorts by name, and all of them.
    named_ports: BTreeMap<String, u16>,
    ports: Vec<u16>,
}

impl Container {
    fn is_hrx(&self) -> bool {
        self.env.keys().any(|k| k.starts_with("HRX_"))
    }

    fn listener_port(&self, var: &str, findings: &mut Findings) -> Option<u16> {
        match self.env.get(var) {
            Some(Some(addr)) => {
                let port = addr_port(addr);
                if port.is_none() {
                    findings.problem(&self.at, format!("{var}={addr:?} is not host:port"));
                }
                port
            }
            _ => None,
        }
    }

    /// Checks that `port` (what `what` targets) is this container's `listener`.
    fn check_port(&self, what: &str, port: &PortRef, listener: Listener, findings: &mut Findings) {
        let number = match port {
            PortRef::Number(n) => *n,
            PortRef::Name(name) => match self.named_ports.get(name) {
                Some(n) => *n,
                None => {
                    findings.problem(
                        &self.at,
                        format!("{what} targets port {name:?}, which no containerPort is named"),
                    );
                    return;
                }
            },
        };
        let grpc = self.listener_port("HRX_GRPC_ADDR", findings);
        let metrics = self.listener_port("HRX_METRICS_ADDR", findings);
        let patient = self.listener_port("HRX_PATIENT_ADDR", findings);
        let wanted: Vec<(&str, Option<u16>)> = match listener {
            Listener::Grpc => vec![("HRX_GRPC_ADDR", grpc)],
            Listener::Metrics => vec![("HRX_METRICS_ADDR", metrics)],
            Listener::Either => vec![
                ("HRX_GRPC_ADDR", grpc),
                ("HRX_METRICS_ADDR", metrics),
                ("HRX_PATIENT_ADDR", patient),
            ],
        };
        if wanted.iter().any(|(_, p)| *p == Some(number)) {
            return;
        }
        let vars: Vec<String> = wanted
            .iter()
            .map(|(var, p)| match p {
                Some(p) => format!("{var} (port {p})"),
                None => format!("{var} (not set)"),
            })
            .collect();
        findings.problem(
            &self.at,
            format!(
                "{what} targets port {number}, which is not {}",
                vars.join(" or ")
            ),
        );
    }

    /// The roles it runs (`--role`, `--role=`, `HRX_ROLES`), reporting unknown names.
    fn roles(&self, findings: &mut Findings) -> Option<BTreeSet<Role>> {
        let mut lists = Vec::new();
        let mut words = self.words.iter();
        while let Some(w) = words.next() {
            if w == "--role" {
                match words.next() {
                    Some(list) => lists.push(("--role", list.clone())),
                    None => findings.problem(&self.at, "--role without a value"),
                }
            } else if let Some(list) = w.strip_prefix("--role=") {
                lists.push(("--role", list.to_owned()));
            }
        }
        if let Some(Some(list)) = self.env.get("HRX_ROLES") {
            lists.push(("HRX_ROLES", list.clone()));
        }
        if lists.is_empty() {
            return None;
        }
        let mut roles = BTreeSet::new();
        for (source, list) in lists {
            let names: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect();
            if names.is_empty() {
                findings.problem(&self.at, format!("{source} names no role"));
            }
            for name in names {
                match Role::parse(name) {
                    Some(r) => {
                        roles.insert(r);
                    }
                    None => findings.problem(
                        &self.at,
                        format!(
                            "{source} names role {name:?}; hrx's roles are {}",
                            Role::ALL.map(Role::name).join(", ")
                        ),
                    ),
                }
            }
        }
        Some(roles)
    }

    /// Role checks, and the roles for `findings.roles`.
    fn check_roles(&self, findings: &mut Findings) -> BTreeSet<Role> {
        let roles = self.roles(findings);
        if self.is_hrx() && self.words.iter().any(|w| w == "serve") && roles.is_none() {
            findings.problem(
                &self.at,
                "runs `hrx serve` without --role or HRX_ROLES (it would run every role)",
            );
        }
        let roles = roles.unwrap_or_default();
        findings.roles.extend(roles.iter().copied());
        roles
    }

    /// Checks a health-check command: its `-addr` port is the gRPC port, a URL's port is
    /// the metrics port, and `-service` is a gRPC service of one of `roles`.
    fn check_health_command(
        &self,
        what: &str,
        words: &[String],
        roles: &BTreeSet<Role>,
        findings: &mut Findings,
    ) {
        let words: Vec<&str> = words.iter().flat_map(|w| w.split_whitespace()).collect();
        for (i, w) in words.iter().enumerate() {
            let flag = w.trim_start_matches('-');
            let dashed = w.starts_with('-');
            let value = |name: &str| -> Option<&str> {
                if !dashed {
                    return None;
                }
                if flag == name {
                    words.get(i + 1).copied()
                } else {
                    flag.strip_prefix(name).and_then(|r| r.strip_prefix('='))
                }
            };
            if let Some(addr) = value("addr") {
                match addr_port(addr) {
                    Some(p) => self.check_port(what, &PortRef::Number(p), Listener::Grpc, findings),
                    None => {
                        findings.problem(&self.at, format!("{what}: -addr {addr:?} has no port"))
                    }
                }
            }
            if let Some(service) = value("service") {
                let known: Vec<&str> = roles
                    .iter()
                    .flat_map(|r| grpc_services(*r))
                    .copied()
                    .collect();
                if !service.is_empty() && !known.contains(&service) {
                    findings.problem(
                        &self.at,
                        format!(
                            "{what} asks for the health of {service}, which none of its roles serves ({})",
                            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                        ),
                    );
                }
            }
            for scheme in ["http://", "https://"] {
                if let Some(rest) = w.find(scheme).map(|at| &w[at + scheme.len()..]) {
                    let authority = rest.split('/').next().unwrap_or_default();
                    if let Some(p) = addr_port(authority) {
                        self.check_port(what, &PortRef::Number(p), Listener::Metrics, findings);
                    }
                }
            }
        }
    }
}

/// The gRPC services a role serves, as the health protocol names them.
fn grpc_services(role: Role) -> &'static [&'static str] {
    use hrx_proto::v1::*;
    match role {
        Role::Ingest => &[ingest_service_server::SERVICE_NAME],
        Role::Projector => &[],
        Role::Timeline => &[timeline_service_server::SERVICE_NAME],
        Role::Consent => &[consent_service_server::SERVICE_NAME],
        Role::Registry => &[registry_service_server::SERVICE_NAME],
        Role::Monitor => &[monitor_service_server::SERVICE_NAME],
    }
}

// ---------------------------------------------------------------- compose

fn check_compose(name: &str, text: &str) -> Findings {
    let mut findings = Findings::default();
    let docs = parse_documents(name, text, &mut findings);
    let [doc] = docs.as_slice() else {
        findings.problem(name, format!("{} YAML documents, expected one", docs.len()));
        return findings;
    };
    check_hrx_names(name, doc, &mut findings);
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        findings.problem(name, "no services");
        return findings;
    };
    for (key, service) in services {
        let service_name = scalar(key).unwrap_or_default();
        let at = format!("{name}: services.{service_name}");
        let mut c = Container {
            at: at.clone(),
            ..Container::default()
        };
        match service.get("environment") {
            Some(Value::Mapping(env)) => {
                for (k, v) in env {
                    c.env.insert(scalar(k).unwrap_or_default(), scalar(v));
                }
            }
            Some(Value::Sequence(env)) => {
                for item in env.iter().filter_map(scalar) {
                    let (k, v) = match item.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (item, None),
                    };
                    c.env.insert(k, v);
                }
            }
            _ => {}
        }
        for part in ["entrypoint", "command"] {
            c.words.extend(
                strings(service.get(part))
                    .iter()
                    .flat_map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>()),
            );
        }
        let roles = c.check_roles(&mut findings);

        if let Some(deps) = service.get("depends_on").and_then(Value::as_mapping) {
            for (dep, spec) in deps {
                let dep = scalar(dep).unwrap_or_default();
                let Some(target) = services.get(dep.as_str()) else {
                    findings.problem(&at, format!("depends on {dep}, which is not a service"));
                    continue;
                };
                let condition = spec
                    .get("condition")
                    .and_then(Value::as_str)
                    .unwrap_or("service_started");
                match condition {
                    "service_started" | "service_completed_successfully" => {}
                    "service_healthy" => {
                        if target.get("healthcheck").is_none() {
                            findings.problem(
                                &at,
                                format!("waits for {dep} to be healthy, which has no healthcheck"),
                            );
                        }
                    }
                    other => findings.problem(
                        &at,
                        format!("depends on {dep} with unknown condition {other}"),
                    ),
                }
            }
        }

        if !c.is_hrx() {
            continue;
        }
        if let Some(test) = service.get("healthcheck").and_then(|h| h.get("test")) {
            let mut words = strings(Some(test));
            if matches!(
                words.first().map(String::as_str),
                Some("CMD" | "CMD-SHELL" | "NONE")
            ) {
                words.remove(0);
            }
            c.check_health_command("healthcheck", &words, &roles, &mut findings);
        }
        for list in ["ports", "expose"] {
            for port in service
                .get(list)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let targets: Vec<String> = match port {
                    Value::Mapping(_) => port.get("target").and_then(scalar).into_iter().collect(),
                    v => scalar(v)
                        .and_then(|s| {
                            let s = s.split('/').next().unwrap_or_default().to_owned();
                            s.rsplit(':').next().map(str::to_owned)
                        })
                        .into_iter()
                        .collect(),
                };
                for target in targets {
                    let range: Vec<u16> = match target.split_once('-') {
                        Some((a, b)) => match (port_number(a), port_number(b)) {
                            (Some(a), Some(b)) if a <= b => (a..=b).collect(),
                            _ => Vec::new(),
                        },
                        None => port_number(&target).into_iter().collect(),
                    };
                    if range.is_empty() {
                        findings.problem(
                            &at,
                            format!("{list}: cannot read container port {target:?}"),
                        );
                    }
                    for p in range {
                        c.check_port(list, &PortRef::Number(p), Listener::Either, &mut findings);
                    }
                }
            }
        }
    }
    findings
}

// ---------------------------------------------------------------- Kubernetes

/// A pod template of a workload, with where it is.
struct Pod<'a> {
    at: String,
    namespace: String,
    metadata: Option<&'a Value>,
    spec: &'a Value,
}

fn namespace_of(doc: &Value) -> String {
    doc.get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(scalar)
        .unwrap_or_else(|| "default".into())
}

fn name_of(doc: &Value) -> String {
    doc.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(scalar)
        .unwrap_or_default()
}

fn check_kubernetes(files: &[(String, String)]) -> Findings {
    let mut findings = Findings::default();
    let mut docs: Vec<(String, Value)> = Vec::new();
    for (name, text) in files {
        for doc in parse_documents(name, text, &mut findings) {
            check_hrx_names(name, &doc, &mut findings);
            docs.push((name.clone(), doc));
        }
    }

    // Keys of the ConfigMaps and Secrets, for envFrom.
    let mut sources: BTreeMap<(String, String, String), BTreeMap<String, Option<String>>> =
        BTreeMap::new();
    for (_, doc) in &docs {
        let kind = doc.get("kind").and_then(scalar).unwrap_or_default();
        findings.kinds.insert(kind.clone());
        if kind != "ConfigMap" && kind != "Secret" {
            continue;
        }
        let mut keys = BTreeMap::new();
        for (part, readable) in [("data", kind == "ConfigMap"), ("stringData", true)] {
            for (k, v) in doc
                .get(part)
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
            {
                let value = if readable { scalar(v) } else { None };
                keys.insert(scalar(k).unwrap_or_default(), value);
            }
        }
        sources.insert((kind, namespace_of(doc), name_of(doc)), keys);
    }

    // Pod templates.
    let mut pods: Vec<Pod<'_>> = Vec::new();
    for (file, doc) in &docs {
        let kind = doc.get("kind").and_then(scalar).unwrap_or_default();
        let template = match kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                doc.get("spec").and_then(|s| s.get("template"))
            }
            "CronJob" => doc
                .get("spec")
                .and_then(|s| s.get("jobTemplate"))
                .and_then(|j| j.get("spec"))
                .and_then(|s| s.get("template")),
            "Pod" => Some(doc),
            _ => None,
        };
        let Some(template) = template else { continue };
        let Some(spec) = template.get("spec") else {
            findings.problem(file, format!("{kind} {} has no pod spec", name_of(doc)));
            continue;
        };
        pods.push(Pod {
            at: format!("{file}: {kind} {}", name_of(doc)),
            namespace: namespace_of(doc),
            metadata: template.get("metadata"),
            spec,
        });
    }

    let mut pod_containers: Vec<Vec<Container>> = Vec::new();
    for pod in &pods {
        let mut containers = Vec::new();
        for list in ["initContainers", "containers"] {
            for c in pod
                .spec
                .get(list)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let container = kubernetes_container(pod, c, &sources, &mut findings);
                let roles = container.check_roles(&mut findings);
                if container.is_hrx() {
                    check_kubernetes_ports(&container, c, &roles, &mut findings);
                }
                containers.push(container);
            }
        }
        // Prometheus annotations name a metrics port of the pod.
        let annotations = pod.metadata.and_then(|m| m.get("annotations"));
        if let Some(port) = annotations
            .and_then(|a| a.get("prometheus.io/port"))
            .and_then(scalar)
        {
            check_pod_port(
                &pod.at,
                "the prometheus.io/port annotation",
                &PortRef::from_value(&Value::String(port)).expect("a scalar"),
                Listener::Metrics,
                &containers,
                &mut findings,
            );
        }
        pod_containers.push(containers);
    }

    // Services and PodDisruptionBudgets select pods; Services target their ports.
    for (file, doc) in &docs {
        let kind = doc.get("kind").and_then(scalar).unwrap_or_default();
        if kind != "Service" && kind != "PodDisruptionBudget" {
            continue;
        }
        let at = format!("{file}: {kind} {}", name_of(doc));
        let spec = doc.get("spec");
        let selector = match kind.as_str() {
            "Service" => spec.and_then(|s| s.get("selector")),
            _ => spec
                .and_then(|s| s.get("selector"))
                .and_then(|s| s.get("matchLabels")),
        };
        let Some(selector) = selector.and_then(Value::as_mapping) else {
            findings.problem(&at, "has no label selector");
            continue;
        };
        let namespace = namespace_of(doc);
        let selected: Vec<usize> = pods
            .iter()
            .enumerate()
            .filter(|(_, pod)| {
                let labels = pod.metadata.and_then(|m| m.get("labels"));
                pod.namespace == namespace
                    && selector
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)).and_then(scalar) == scalar(v))
            })
            .map(|(i, _)| i)
            .collect();
        if selected.is_empty() {
            findings.problem(&at, "selects no pod of these manifests");
            continue;
        }
        if kind != "Service" {
            continue;
        }
        for port in spec
            .and_then(|s| s.get("ports"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let target = port
                .get("targetPort")
                .or_else(|| port.get("port"))
                .and_then(PortRef::from_value);
            let Some(target) = target else {
                findings.problem(&at, "a port without port or targetPort");
                continue;
            };
            let what = format!(
                "Service port {}",
                port.get("name").and_then(scalar).unwrap_or_default()
            );
            for &i in &selected {
                check_pod_port(
                    &at,
                    &what,
                    &target,
                    Listener::Either,
                    &pod_containers[i],
                    &mut findings,
                );
            }
        }
    }
    findings
}

/// A Kubernetes container with its environment resolved (env, envFrom).
fn kubernetes_container(
    pod: &Pod<'_>,
    c: &Value,
    sources: &BTreeMap<(String, String, String), BTreeMap<String, Option<String>>>,
    findings: &mut Findings,
) -> Container {
    let at = format!(
        "{} container {}",
        pod.at,
        c.get("name").and_then(scalar).unwrap_or_default()
    );
    let mut container = Container {
        at: at.clone(),
        ..Container::default()
    };
    for from in c
        .get("envFrom")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let prefix = from.get("prefix").and_then(scalar).unwrap_or_default();
        for (field, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
            let Some(reference) = from.get(field) else {
                continue;
            };
            let name = reference.get("name").and_then(scalar).unwrap_or_default();
            let optional = reference.get("optional").and_then(Value::as_bool) == Some(true);
            match sources.get(&(kind.to_owned(), pod.namespace.clone(), name.clone())) {
                Some(keys) => {
                    for (k, v) in keys {
                        container.env.insert(format!("{prefix}{k}"), v.clone());
                    }
                }
                None if optional => {}
                None => findings.problem(
                    &at,
                    format!("envFrom {kind} {name}, which these manifests do not define"),
                ),
            }
        }
    }
    for e in c
        .get("env")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let name = e.get("name").and_then(scalar).unwrap_or_default();
        container.env.insert(name, e.get("value").and_then(scalar));
    }
    for part in ["command", "args"] {
        container.words.extend(strings(c.get(part)));
    }
    for p in c
        .get("ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let Some(number) = p
            .get("containerPort")
            .and_then(scalar)
            .and_then(|s| port_number(&s))
        else {
            findings.problem(&at, "a port without a containerPort number");
            continue;
        };
        container.ports.push(number);
        if let Some(name) = p.get("name").and_then(scalar) {
            container.named_ports.insert(name, number);
        }
    }
    container
}

/// Probes and containerPorts of an hrx container.
fn check_kubernetes_ports(
    container: &Container,
    c: &Value,
    roles: &BTreeSet<Role>,
    findings: &mut Findings,
) {
    for &p in &container.ports {
        container.check_port(
            "containerPort",
            &PortRef::Number(p),
            Listener::Either,
            findings,
        );
    }
    for probe_kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let Some(probe) = c.get(probe_kind) else {
            continue;
        };
        let port_of = |handler: &str| {
            probe
                .get(handler)
                .and_then(|h| h.get("port"))
                .and_then(PortRef::from_value)
        };
        if let Some(port) = port_of("grpc") {
            container.check_port(
                &format!("{probe_kind} (grpc)"),
                &port,
                Listener::Grpc,
                findings,
            );
        }
        if let Some(port) = port_of("httpGet") {
            container.check_port(
                &format!("{probe_kind} (httpGet)"),
                &port,
                Listener::Metrics,
                findings,
            );
        }
        if let Some(port) = port_of("tcpSocket") {
            container.check_port(
                &format!("{probe_kind} (tcpSocket)"),
                &port,
                Listener::Either,
                findings,
            );
        }
        if let Some(exec) = probe.get("exec") {
            let words = strings(exec.get("command"));
            container.check_health_command(
                &format!("{probe_kind} (exec)"),
                &words,
                roles,
                findings,
            );
        }
    }
}

/// A port that something outside the pod targets must be one of its hrx containers'
/// listeners: a named port is looked up in the container that declares it.
fn check_pod_port(
    at: &str,
    what: &str,
    port: &PortRef,
    listener: Listener,
    containers: &[Container],
    findings: &mut Findings,
) {
    let hrx: Vec<&Container> = containers.iter().filter(|c| c.is_hrx()).collect();
    if hrx.is_empty() {
        return;
    }
    let candidates: Vec<&Container> = match port {
        PortRef::Name(name) => hrx
            .iter()
            .copied()
            .filter(|c| c.named_ports.contains_key(name))
            .collect(),
        PortRef::Number(n) => {
            let by_port: Vec<&Container> = hrx
                .iter()
                .copied()
                .filter(|c| c.ports.contains(n))
                .collect();
            if by_port.is_empty() {
                hrx.clone()
            } else {
                by_port
            }
        }
    };
    if candidates.is_empty() {
        if let PortRef::Name(name) = port {
            findings.problem(
                at,
                format!("{what} targets port {name:?}, which no container of the pod names"),
            );
        }
        return;
    }
    // Clean if any candidate accepts it; otherwise report against the first one.
    for c in &candidates {
        let mut trial = Findings::default();
        c.check_port(what, port, listener, &mut trial);
        if trial.problems.is_empty() {
            return;
        }
    }
    let mut report = Findings::default();
    candidates[0].check_port(what, port, listener, &mut report);
    for p in report.problems {
        findings.problems.push(format!("{at}: {p}"));
    }
}
