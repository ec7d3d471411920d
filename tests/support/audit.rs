//! The API server's own record of what was asked of it: the audit log
//! `scripts/control-plane` keeps (`<state>/logs/audit.log`, one JSON line per
//! request at completion, metadata only). Tests read it to check what
//! tenantsync really sent (verbs, pages, requests in flight, who wrote),
//! not what tenantsync says it sent.
//!
//! Requests are told apart by credential: each test gets a ServiceAccount
//! token of its own ([`identity`]), whose `credential-id` (the token's JTI)
//! the audit log records, so concurrent tests never mix.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{control_plane, unique_name};

/// One request, as the API server recorded it.
#[derive(Clone, Debug)]
pub struct Request {
    pub verb: String,
    pub uri: String,
    pub user_agent: String,
    pub resource: String,
    pub group: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    /// Microseconds since the epoch: received, and answered.
    pub received: i64,
    pub completed: i64,
}

impl Request {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// A ServiceAccount token of a test's own, bound to a ClusterRole.
pub struct Identity {
    pub kubeconfig: PathBuf,
    /// What the audit log records as the token's `credential-id`.
    credential: String,
}

fn kubectl(args: &[&str]) -> String {
    let out = control_plane()
        .kubectl()
        .args(["--context", "admin"])
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh ServiceAccount in a namespace of its own, bound cluster-wide to
/// `cluster_role`, and a kubeconfig (in `dir`) with a new token of it.
pub fn identity(test: &str, cluster_role: &str, dir: &Path) -> Identity {
    let namespace = unique_name(test);
    kubectl(&["create", "namespace", &namespace]);
    kubectl(&[
        "label",
        "namespace",
        &namespace,
        &format!("{}=true", super::NAMESPACE_LABEL),
    ]);
    kubectl(&["-n", &namespace, "create", "serviceaccount", "caller"]);
    kubectl(&[
        "create",
        "clusterrolebinding",
        &namespace,
        &format!("--clusterrole={cluster_role}"),
        &format!("--serviceaccount={namespace}:caller"),
    ]);
    let token = service_account_token(&namespace, "caller");
    identity_of(&token, dir, &namespace)
}

/// A fresh token of an existing ServiceAccount, and a kubeconfig with it.
pub fn token_identity(namespace: &str, service_account: &str, dir: &Path) -> Identity {
    let token = service_account_token(namespace, service_account);
    identity_of(&token, dir, &unique_name(service_account))
}

fn service_account_token(namespace: &str, service_account: &str) -> String {
    kubectl(&[
        "-n",
        namespace,
        "create",
        "token",
        service_account,
        "--duration=1h",
    ])
}

fn identity_of(token: &str, dir: &Path, file: &str) -> Identity {
    let admin = kube::config::Kubeconfig::read_from(control_plane().kubeconfig())
        .expect("read the test kubeconfig");
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("a cluster in the test kubeconfig");
    // JSON is YAML: kube and kubectl read it as a kubeconfig.
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": "caller", "user": {"token": token}}],
        "contexts": [{"name": "caller", "context": {"cluster": "cluster", "user": "caller"}}],
        "current-context": "caller",
    });
    let path = dir.join(format!("{file}.kubeconfig"));
    std::fs::write(&path, kubeconfig.to_string()).expect("write kubeconfig");
    let claims = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&base64url(claims)).expect("JWT claims");
    let jti = claims["jti"].as_str().expect("the token's jti");
    Identity {
        kubeconfig: path,
        credential: format!("JTI={jti}"),
    }
}

fn base64url(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' | b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The audit log of the test run's control plane.
fn path() -> PathBuf {
    let state = control_plane()
        .kubeconfig()
        .parent()
        .expect("the kubeconfig is in the state dir")
        .to_path_buf();
    let path = state.join("logs/audit.log");
    assert!(
        path.is_file(),
        "{} does not exist: this control plane runs without an audit log (started by an older \
         scripts/control-plane?); restart it: scripts/control-plane down, then up",
        path.display()
    );
    path
}

/// A place in the audit log: requests recorded after it.
pub struct Cursor(u64);

/// Where the audit log ends now.
pub fn cursor() -> Cursor {
    Cursor(std::fs::metadata(path()).expect("audit log").len())
}

impl Identity {
    /// Every request made with this identity's token after `from`, in the
    /// order the API server recorded them. Waits until a marker request
    /// made now is recorded, so that everything sent before is.
    pub fn requests_since(&self, from: &Cursor) -> Vec<Request> {
        let marker = unique_name("audit-marker");
        let _ = control_plane()
            .kubectl()
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", "default", "get", "configmap", &marker])
            .output()
            .expect("kubectl");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (lines, marked) = read_from(from, &self.credential, &marker);
            if marked {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "the audit log never recorded the marker request {marker}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The requests of `credential` after `from`, up to `marker` (and whether
/// the marker was found).
fn read_from(from: &Cursor, credential: &str, marker: &str) -> (Vec<Request>, bool) {
    let mut file = std::fs::File::open(path()).expect("open the audit log");
    let len = file.metadata().expect("audit log").len();
    // Rotated meanwhile (500 MB): read the new file from its start.
    let start = if len >= from.0 { from.0 } else { 0 };
    file.seek(SeekFrom::Start(start)).expect("seek");
    let mut text = String::new();
    file.read_to_string(&mut text).expect("read the audit log");
    let mut requests = Vec::new();
    for line in text.lines() {
        if !line.contains(credential) {
            continue;
        }
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let credential_ok = event["user"]["extra"]["authentication.kubernetes.io/credential-id"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id == credential));
        if !credential_ok {
            continue;
        }
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let object = &event["objectRef"];
        if s(&object["name"]) == marker {
            return (requests, true);
        }
        let time = |v: &Value| {
            s(v).parse::<k8s_openapi::jiff::Timestamp>()
                .map(|t| t.as_microsecond())
                .unwrap_or_default()
        };
        requests.push(Request {
            verb: s(&event["verb"]),
            uri: s(&event["requestURI"]),
            user_agent: s(&event["userAgent"]),
            resource: s(&object["resource"]),
            group: s(&object["apiGroup"]),
            namespace: s(&object["namespace"]),
            name: s(&object["name"]),
            code: event["responseStatus"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or_default(),
            received: time(&event["requestReceivedTimestamp"]),
            completed: time(&event["stageTimestamp"]),
        });
    }
    (requests, false)
}

/// The most requests that were being served at once, of those given.
pub fn most_in_flight(requests: &[&Request]) -> usize {
    let mut edges: Vec<(i64, i32)> = requests
        .iter()
        .flat_map(|r| [(r.received, 1), (r.completed, -1)])
        .collect();
    // At one instant, an end before a start: touching is not overlapping.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or_default()
}
