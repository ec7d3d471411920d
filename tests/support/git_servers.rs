//! Real Git servers on loopback for the transport tests, each started by the
//! test that uses it and killed when it is dropped: an OpenSSH `sshd` of the
//! test's own (own host key, own `authorized_keys`, a random port, in the
//! foreground), and nginx serving `git http-backend` through fcgiwrap over
//! TLS with a certificate authority made for the test. A server that cannot
//! start fails the test with the reason; nothing is skipped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a command, failing the test with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed? see .ci/run)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free TCP port on `addr`.
pub fn free_port(addr: &str) -> u16 {
    TcpListener::bind((addr, 0))
        .unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"))
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process killed (and reaped) on drop.
pub struct Server {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Server {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Server {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).expect("log"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e} (see .ci/run)"));
        Server {
            child,
            name,
            log: log.to_path_buf(),
        }
    }

    /// Waits until `addr:port` accepts connections; fails with the server's
    /// log if it exits or does not listen within 10 s.
    fn wait_listening(&mut self, addr: &str, port: u16) {
        let start = Instant::now();
        while TcpStream::connect((addr, port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening on {addr}:{port}: {}{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default(),
                    std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} did not listen on {addr}:{port} within 10 s: {}",
                self.name,
                std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The user the tests run as (sshd can only log in as this user when it
/// does not run as root).
pub fn current_user() -> String {
    String::from_utf8_lossy(&run(Command::new("id").arg("-un")).stdout)
        .trim()
        .to_string()
}

/// Makes an ssh key pair `dir/name` (and `name.pub`) of `kind`
/// (`ed25519`, `rsa`, `ecdsa`), protected by `passphrase` if not empty.
pub fn ssh_keygen(dir: &Path, name: &str, kind: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", name, "-f"])
        .arg(&path));
    path
}

/// OpenSSH's sshd on 127.0.0.1, a random port, in the foreground, with a
/// host key and `authorized_keys` of its own.
pub struct Sshd {
    pub port: u16,
    /// `known_hosts` line for this server (`[127.0.0.1]:port ssh-ed25519 …`).
    pub known_hosts_line: String,
    _server: Server,
}

impl Sshd {
    pub fn start(dir: &Path, authorized: &[&Path]) -> Sshd {
        std::fs::create_dir_all(dir).expect("mkdir");
        let host_key = ssh_keygen(dir, "host_ed25519", "ed25519", "");
        let mut keys = String::new();
        for key in authorized {
            keys.push_str(&std::fs::read_to_string(key.with_extension("pub")).expect("public key"));
        }
        let authorized_keys = dir.join("authorized_keys");
        std::fs::write(&authorized_keys, keys).expect("authorized_keys");
        // sshd started as root needs its privilege separation folder (which
        // Debian's service creates at boot).
        if current_user() == "root" {
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let port = free_port("127.0.0.1");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized_keys.display()
            ),
        )
        .expect("sshd_config");
        let mut server = Server::spawn(
            "sshd",
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config),
            &dir.join("sshd.log"),
        );
        server.wait_listening("127.0.0.1", port);
        let public = std::fs::read_to_string(host_key.with_extension("pub")).expect("host key");
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().expect("type"), fields.next().expect("key"));
        Sshd {
            port,
            known_hosts_line: format!("[127.0.0.1]:{port} {kind} {key}\n"),
            _server: server,
        }
    }

    /// What sshd logged (to stderr, with `-e`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._server.log.with_extension("err")).unwrap_or_default()
    }
}

/// A certificate authority made for the test, and server certificates it
/// signs.
pub struct TestCa {
    dir: PathBuf,
    /// The authority's certificate (PEM), for `SSL_CERT_FILE`.
    pub cert: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("mkdir");
        let cert = dir.join("ca.pem");
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:P-256")
            .args(["-nodes", "-days", "2", "-subj", "/CN=tenantsync test CA"])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(&cert));
        TestCa {
            dir: dir.to_path_buf(),
            cert,
        }
    }

    /// A server certificate for the given IP addresses: `(cert, key)`.
    pub fn issue(&self, name: &str, ips: &[&str]) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.pem"));
        let ext = self.dir.join(format!("{name}.ext"));
        let san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        std::fs::write(&ext, format!("subjectAltName={}\n", san.join(","))).expect("ext");
        run(Command::new("openssl")
            .args(["req", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:P-256")
            .args(["-nodes", "-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&self.cert)
            .arg("-CAkey")
            .arg(self.dir.join("ca.key"))
            .args(["-CAcreateserial", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&cert));
        (cert, key)
    }
}

/// nginx serving `git http-backend` (through fcgiwrap) over TLS:
/// - `https://127.0.0.1:{port}/public/…` anonymous,
/// - `…/private/…` behind basic auth (the users given),
/// - `…/redirect/…` a redirect to `https://127.0.0.2:{port2}/private/…`, a
///   second host whose access log records any `Authorization` header, and
///   `…/authenticated-redirect/…` the same redirect behind basic auth,
/// - `https://127.0.0.1:{wrong_ip_port}/public/…` with a certificate made
///   for another address (127.0.0.9).
///
/// Repositories are served from `root`.
pub struct GitHttps {
    pub port: u16,
    pub wrong_ip_port: u16,
    dir: PathBuf,
    _nginx: Server,
    _fcgiwrap: Server,
}

impl GitHttps {
    pub fn start(dir: &Path, ca: &TestCa, root: &Path, users: &[(&str, &str)]) -> GitHttps {
        std::fs::create_dir_all(dir.join("tmp")).expect("mkdir");
        let (cert, key) = ca.issue("server", &["127.0.0.1", "127.0.0.2"]);
        let (wrong_cert, wrong_key) = ca.issue("wrong-ip", &["127.0.0.9"]);
        let mut htpasswd = String::new();
        for (user, password) in users {
            let hash = run(Command::new("openssl").args(["passwd", "-apr1", password])).stdout;
            htpasswd.push_str(&format!(
                "{user}:{}\n",
                String::from_utf8_lossy(&hash).trim()
            ));
        }
        std::fs::write(dir.join("htpasswd"), htpasswd).expect("htpasswd");
        let socket = dir.join("fcgiwrap.sock");
        let mut fcgiwrap = Server::spawn(
            "fcgiwrap",
            Command::new("/usr/sbin/fcgiwrap")
                .arg("-s")
                .arg(format!("unix:{}", socket.display())),
            &dir.join("fcgiwrap.log"),
        );
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = fcgiwrap.child.try_wait() {
                panic!(
                    "fcgiwrap exited ({status}): {}",
                    std::fs::read_to_string(dir.join("fcgiwrap.err")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "fcgiwrap did not make {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let backend = |auth: bool| {
            format!(
                "{}fastcgi_pass unix:{sock};\n include /etc/nginx/fastcgi_params;\n fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;\n fastcgi_param GIT_PROJECT_ROOT {root};\n fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n fastcgi_param GIT_CONFIG_NOSYSTEM 1;\n fastcgi_param PATH_INFO $1;\n fastcgi_param REMOTE_USER $remote_user;\n",
                if auth {
                    format!(
                        "auth_basic \"git\";\n auth_basic_user_file {};\n",
                        dir.join("htpasswd").display()
                    )
                } else {
                    String::new()
                },
                sock = socket.display(),
                root = root.display(),
            )
        };
        let port = free_port("127.0.0.1");
        let port2 = free_port("127.0.0.2");
        let wrong_ip_port = free_port("127.0.0.1");
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 64; }}\nhttp {{\n log_format auth '$server_addr:$server_port \"$request\" $status authorization=\"$http_authorization\"';\n access_log {d}/access.log auth;\n client_body_temp_path {d}/tmp/body;\n fastcgi_temp_path {d}/tmp/fastcgi;\n proxy_temp_path {d}/tmp/proxy;\n uwsgi_temp_path {d}/tmp/uwsgi;\n scgi_temp_path {d}/tmp/scgi;\n server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {cert};\n  ssl_certificate_key {key};\n  location ~ ^/public(/.*)$ {{ {public} }}\n  location ~ ^/private(/.*)$ {{ {private} }}\n  location /redirect/ {{ rewrite ^/redirect/(.*)$ https://127.0.0.2:{port2}/private/$1 redirect; }}\n  location /authenticated-redirect/ {{ auth_basic \"git\"; auth_basic_user_file {d}/htpasswd; try_files /nonexistent @redirect; }}\n  location @redirect {{ rewrite ^/authenticated-redirect/(.*)$ https://127.0.0.2:{port2}/private/$1 redirect; }}\n }}\n server {{\n  listen 127.0.0.2:{port2} ssl;\n  ssl_certificate {cert};\n  ssl_certificate_key {key};\n  access_log {d}/second-host.log auth;\n  location ~ ^/private(/.*)$ {{ {private} }}\n }}\n server {{\n  listen 127.0.0.1:{wrong_ip_port} ssl;\n  ssl_certificate {wcert};\n  ssl_certificate_key {wkey};\n  location ~ ^/public(/.*)$ {{ {public} }}\n }}\n}}\n",
            cert = cert.display(),
            key = key.display(),
            wcert = wrong_cert.display(),
            wkey = wrong_key.display(),
            public = backend(false),
            private = backend(true),
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config).expect("nginx.conf");
        let mut nginx = Server::spawn(
            "nginx",
            Command::new("/usr/sbin/nginx")
                .arg("-c")
                .arg(&config_path)
                .arg("-p")
                .arg(dir)
                .args(["-e", "stderr"]),
            &dir.join("nginx.log"),
        );
        nginx.wait_listening("127.0.0.1", port);
        nginx.wait_listening("127.0.0.2", port2);
        nginx.wait_listening("127.0.0.1", wrong_ip_port);
        GitHttps {
            port,
            wrong_ip_port,
            dir: dir.to_path_buf(),
            _nginx: nginx,
            _fcgiwrap: fcgiwrap,
        }
    }

    /// Requests the second host (127.0.0.2) received, one line each, with
    /// the `Authorization` header they carried.
    pub fn second_host_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("second-host.log")).unwrap_or_default()
    }

    /// The first host's access log.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}
