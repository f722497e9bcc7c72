//! Debian's nginx (`nginx-light`, with `auth_request`) as a child process on a free loopback
//! port, with the caller's `server` block body; default header buffers
//! (`large_client_header_buffers 4 8k`).

use std::time::Duration;

use super::process::free_port;

pub struct Nginx {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx proxying everything to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Nginx {
        Self::start_with(|_| format!("location / {{ proxy_pass http://{upstream}; }}")).await
    }

    /// nginx on a free port whose `server` block holds what `body` makes of that port.
    pub async fn start_with(body: impl FnOnce(u16) -> String) -> Nginx {
        Self::start_on(free_port(), body).await
    }

    /// As [`Nginx::start_with`], on `port`.
    pub async fn start_on(port: u16, body: impl FnOnce(u16) -> String) -> Nginx {
        let server = format!("server {{\n  listen 127.0.0.1:{port};\n{}\n }}", body(port));
        Self::start_server(port, &server).await
    }

    /// nginx with `server` (whole `server { }` blocks, listening on `port`) in its `http`
    /// block.
    pub async fn start_server(port: u16, server: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             {server}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| std::process::Command::new(p).arg("-v").output().is_ok())
            .expect("nginx is installed (.ci/run installs it)");
        let child = std::process::Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut up = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(up, "nginx did not listen: {}", Self::errors(&dir));
        Nginx { child, port, dir }
    }

    fn errors(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
    }

    /// nginx's error log so far.
    pub fn log(&self) -> String {
        Self::errors(&self.dir)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
