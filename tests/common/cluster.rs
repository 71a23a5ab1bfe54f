//! Mesh nodes for tests: a dev node with `[cluster]` set, cluster certificates, waits.
#![allow(dead_code)]

use std::path::PathBuf;

use edgegate::config::Config;
use edgegate::gateway::Gateway;
use edgegate::mesh::Mesh;
use tokio_util::sync::CancellationToken;

use super::common::{TestNode, dev_config, eventually};

pub fn certs(tag: &str, nodes: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgegate-mesh-{tag}-{}", std::process::id()));
    let names: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    edgegate::mesh::tls::generate(&dir, &names).expect("cluster certs");
    dir
}

pub struct Node {
    pub t: TestNode,
    pub mesh: Mesh,
}

/// A dev node in the mesh: `id` in `region`, seeded with `seeds`, advertising `advertise`.
pub async fn node(
    dir: &std::path::Path,
    id: &str,
    region: &str,
    seeds: Vec<String>,
    advertise: Option<String>,
    listen_port: u16,
    tweak: impl FnOnce(&mut Config),
) -> Node {
    let mut config = dev_config();
    config.shutdown.lame_duck_secs = 1;
    config.shutdown.deadline_secs = 5;
    config.node.id = id.into();
    config.node.region = region.into();
    config.session.publish_rate = 100_000;
    config.session.publish_burst = 100_000;
    for ns in &mut config.namespace {
        ns.history_len = 20_000;
        ns.history_bytes = 64 << 20;
    }
    let c = &mut config.cluster;
    c.listen = Some(([127, 0, 0, 1], listen_port).into());
    c.advertise = advertise;
    c.seeds = seeds;
    c.ca = Some(dir.join("ca.pem"));
    c.cert = Some(dir.join(format!("{id}.pem")));
    c.key = Some(dir.join(format!("{id}.key")));
    tweak(&mut config);
    let gw = Gateway::load(config).await.expect("gateway");
    let mesh = gw.mesh().expect("mesh").clone();
    let shutdown = CancellationToken::new();
    let t = TestNode {
        addr: gw.local_addr(),
        api_key: gw.api_key().expect("key").to_string(),
        cert_sha256: gw.cert_sha256(),
        shared: gw.shared().clone(),
        shutdown: shutdown.clone(),
        handle: tokio::spawn(gw.run(shutdown)),
    };
    Node { t, mesh }
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub async fn linked(nodes: &[&Node], n: usize) {
    for x in nodes {
        let m = x.mesh.clone();
        eventually("mesh links", move || m.links().len() == n).await;
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now (for configs that must name their
/// client URL before the node starts).
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}
