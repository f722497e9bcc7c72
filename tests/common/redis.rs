//! A real `redis-server` (Debian's package) on a free loopback port, stopped on drop; tests can
//! stop and start it again to see tollgate ride out a store outage.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::free_port;

pub struct Redis {
    child: Option<Child>,
    /// The plain port (readiness; with TLS, clients use `tls`'s port).
    pub port: u16,
    tls: Option<Tls>,
}

/// A TLS listener with an ACL user (the default user is off).
struct Tls {
    port: u16,
    args: Vec<String>,
    user: String,
    password: String,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut r = Redis::on(free_port());
        r.restart().await;
        r
    }

    fn on(port: u16) -> Redis {
        Redis {
            child: None,
            port,
            tls: None,
        }
    }

    /// A server whose clients must use TLS (certificate and key in PEM files) and log in as
    /// `user` with `password`.
    pub async fn start_tls(cert: &Path, key: &Path, user: &str, password: &str) -> Redis {
        let port = free_port();
        let args = [
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--user",
            user,
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ];
        let mut r = Redis {
            child: None,
            port: free_port(),
            tls: Some(Tls {
                port,
                args: args.iter().map(|a| a.to_string()).collect(),
                user: user.to_string(),
                password: password.to_string(),
            }),
        };
        r.restart().await;
        r
    }

    /// The URL tollgate's `[store] url` takes: `rediss://user:password@…` for a TLS server.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(t) => format!("rediss://{}:{}@127.0.0.1:{}/0", t.user, t.password, t.port),
        }
    }

    /// Starts the server (again) on the same port and waits until it answers `PING`.
    pub async fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(t) = &self.tls {
            command
                .args(["--tls-port", &t.port.to_string()])
                .args(&t.args);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server; .ci/run does)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        // With the default user off, a live server answers `-NOAUTH …`. Bounded: something
        // else on the port (another node's cluster bus) may accept and never answer.
        let mut buf = [0u8; 7];
        let read = tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await;
        matches!(read, Ok(Ok(_))) && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A three-node Redis Cluster (no replicas) on free loopback ports, made with
/// `redis-cli --cluster create`, stopped on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        // Three different ports (each is only checked free, not yet bound).
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut nodes = Vec::new();
        for port in &ports {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "2000"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server (apt-get install redis-server; .ci/run does)");
            nodes.push(child);
        }
        let cluster = RedisCluster {
            nodes,
            ports,
            _dir: dir,
        };
        for port in &cluster.ports {
            let node = Redis::on(*port);
            let mut up = false;
            for _ in 0..300 {
                if node.ping().await {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                up,
                "redis-server (cluster node) did not answer on {port} within 15 s"
            );
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addresses)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output(),
        )
        .await
        .expect("redis-cli --cluster create finished within 30 s")
        .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Ready when every node says the cluster is ok (all slots served).
        for port in &cluster.ports {
            let mut ok = false;
            for _ in 0..200 {
                let info = tokio::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .await
                    .expect("run redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(ok, "cluster node {port} never reported cluster_state:ok");
        }
        cluster
    }

    /// `cluster_urls` for `[store]`.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port for a cluster node whose cluster bus port (the port + 10000) is free too and, like
/// the port, below the kernel's ephemeral range (where an outbound connection could take it
/// before the node binds it). Ports are below 20000 and bus ports from 20000 on, so one node's
/// port is never another's bus port (a node that lost that race exited, and the readiness
/// check met the other node's bus instead).
fn cluster_port() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..10_000 {
        let port = 10_000 + rand::random::<u16>() % 10_000;
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no port whose cluster bus port is free");
}
