//! The baseline for tollgate's load benchmark: a bare Pingora reverse proxy with no auth, the
//! same Pingora version and server settings as tollgate, nothing but `upstream_peer`.
//!
//! It links the same global allocator as tollgate (mimalloc, or jemalloc with
//! `--features jemalloc`), so the ratio compares like with like.
//!
//! `cargo run --release --example bare_pingora -- LISTEN UPSTREAM THREADS`
//! (e.g. `127.0.0.1:18082 127.0.0.1:18080 2`).

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

// The allocator: mimalloc by default (benches/RESULTS.md, "Allocator"); jemalloc when built
// with `--features jemalloc` for the comparison; the system allocator with neither.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM THREADS");
        std::process::exit(2);
    }
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM is ip:port");
    let threads: usize = args[3].parse().expect("THREADS is a number");
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            peer: HttpPeer::new(upstream, false, String::new()),
        },
    );
    proxy.add_tcp(&args[1]);
    server.add_service(proxy);
    server.run_forever();
}
